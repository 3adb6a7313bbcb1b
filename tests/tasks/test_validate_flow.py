"""The validation gate in the running system: `ratchet validate`, s3:// sources,
re-delivery of a fixed and of an identical file, the drop_rows policy and leakage
through the retrain flow (these two train the tiny model for one epoch)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.intake.batch import batch_id_for, intake, is_known, mark_decided, split_batch, store_split
from tasks.core.workspace import Workspace
from test_bad_inputs import GOOD, csv_bytes, production_ws, snapshot  # noqa: F401  (module fixture)

runner = CliRunner()
FAST = ["--set", "train.epochs=1"]


@pytest.fixture
def ws(production_ws, tmp_path):
    """A private copy of the module's workspace: these tests add batches to it."""
    work = tmp_path / "ws"
    shutil.copytree(production_ws, work, symlinks=True)
    return work


def exam_and_train_texts(ws) -> tuple[list[str], list[str]]:
    exam = pd.concat(pd.read_parquet(p) for p in (ws / "data" / "exam").glob("*.parquet"))
    train = pd.concat(pd.read_parquet(p) for p in (ws / "data" / "batches").glob("*/train.parquet"))
    return list(exam["text"]), list(train["text"])


def test_ratchet_validate_reports_without_writing(ws, tmp_path):
    before = sorted(p.relative_to(ws) for p in ws.rglob("*"))
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_bytes(csv_bytes(GOOD))
    bad.write_bytes(csv_bytes(GOOD[:3] + [("  ", "weather")] + GOOD[3:] + [("pizza", "food")]))
    ok = runner.invoke(app, ["validate", str(good), "--workspace", str(ws)])
    assert ok.exit_code == 0, ok.output
    assert "accepted" in ok.output and "12 would go on" in ok.output
    rejected = runner.invoke(app, ["validate", str(bad), "--workspace", str(ws)])
    assert rejected.exit_code == 4, rejected.output
    assert "expect_column_values_to_not_match_regex" in rejected.output and "new_label_has_min_examples" in rejected.output
    as_json = json.loads(runner.invoke(app, ["validate", str(bad), "--workspace", str(ws), "--json"]).output)
    blank = next(f for f in as_json["failures"] if f["expectation"] == "expect_column_values_to_not_match_regex")
    assert blank["examples"] == [5] and as_json["batch_id"] == batch_id_for(bad.read_bytes())
    dropped = runner.invoke(app, ["validate", str(bad), "--workspace", str(ws), "--set", "validate.on_bad_rows=drop_rows"])
    assert dropped.exit_code == 0 and "accepted with warnings" in dropped.output
    assert runner.invoke(app, ["validate", str(tmp_path / "nope.csv")]).exit_code == 2
    assert sorted(p.relative_to(ws) for p in ws.rglob("*")) == before  # nothing written


def test_s3_batches_are_validated_and_quarantined(ws, s3_bucket):
    from tasks.core.storage import put_bytes

    raw = csv_bytes(GOOD + [("", "music")])
    uri = f"s3://{s3_bucket}/landing/2026/bad batch.csv"
    put_bytes(uri, raw)
    checked = runner.invoke(app, ["validate", uri, "--workspace", str(ws)])
    assert checked.exit_code == 4, checked.output
    before = snapshot(ws)
    result = runner.invoke(app, ["retrain", "--batch", uri, "--workspace", str(ws)])
    assert result.exit_code == 4, result.output
    [kept] = (ws / "data" / "quarantine" / batch_id_for(raw) / "raw").iterdir()
    assert kept.read_bytes() == raw and kept.name == f"{batch_id_for(raw)}.csv"  # the key had a space
    assert snapshot(ws) == before
    missing = runner.invoke(app, ["validate", f"s3://{s3_bucket}/nothing.csv", "--workspace", str(ws)])
    assert missing.exit_code == 2


def test_is_known_reads_s3(ws, s3_bucket, tmp_path):
    from tasks.core.storage import put_bytes

    raw = csv_bytes(GOOD)
    uri = f"s3://{s3_bucket}/b.csv"
    put_bytes(uri, raw)
    space = Workspace.at(ws)
    got = intake(uri, space)
    assert got.batch_id == batch_id_for(raw) and got.raw_path.read_bytes() == raw
    assert is_known(uri, space) is None
    store_split(split_batch(got.frame, got.batch_id, 0.2), got.batch_id, space)
    mark_decided(got.batch_id, space, "promoted", "run-1")
    assert is_known(uri, space) == got.batch_id


def test_fixed_redelivery_goes_through_identical_is_skipped_and_leaks_are_kept_out(ws, tmp_path):
    exam, past = exam_and_train_texts(ws)
    rows = [(t, lab, "train") for t, lab in GOOD[:4] + GOOD[6:10]] + \
           [(t, lab, "test") for t, lab in GOOD[4:6] + GOOD[10:]] + \
           [(exam[0].upper(), "weather", "train"), (past[0], "music", "test")]
    header = ("text", "label", "split")
    bad, fixed = tmp_path / "batch.csv", tmp_path / "batch_fixed.csv"
    bad.write_bytes(csv_bytes(rows + [("", "music", "train")], header=header))
    fixed.write_bytes(csv_bytes(rows, header=header))

    first = runner.invoke(app, ["retrain", "--batch", str(bad), "--workspace", str(ws), *FAST])
    assert first.exit_code == 4, first.output
    second = runner.invoke(app, ["retrain", "--batch", str(fixed), "--workspace", str(ws), *FAST])
    assert second.exit_code in (0, 3), second.output  # trained and judged: promoted or rejected by the gate
    batch_id = batch_id_for(fixed.read_bytes())
    assert batch_id != batch_id_for(bad.read_bytes())
    decision = json.loads(next((ws / "reports").glob(f"*-{batch_id}/decision.json")).read_text())
    validation = decision["details"]["validation"]
    assert validation["verdict"] == "accepted_with_warnings"
    assert validation["counts"]["leakage"] == {"train_rows_in_exam": 1, "heldout_rows_in_past_train": 1,
                                               "train_rows_in_own_heldout": 0}
    train = set(pd.read_parquet(ws / "data" / "batches" / batch_id / "train.parquet")["text"])
    held = set(pd.read_parquet(ws / "data" / "exam" / f"{batch_id}.parquet")["text"])
    assert exam[0].upper() not in train and past[0] not in held
    assert len(train) == 8 and len(held) == 4

    third = runner.invoke(app, ["retrain", "--batch", str(fixed), "--workspace", str(ws), *FAST])
    assert third.exit_code == 5 and "skipped" in third.output
    checked = runner.invoke(app, ["validate", str(fixed), "--workspace", str(ws), "--json"])
    assert json.loads(checked.output)["already_accepted"] is True


def test_drop_rows_trains_on_the_rest_and_quarantines_the_bad_rows(ws, tmp_path):
    rows = GOOD + [("", "weather"), ("RAIN today 1", "music"), ("bad\x07bell", "music")]
    batch = tmp_path / "drop.csv"
    batch.write_bytes(csv_bytes(rows))
    result = runner.invoke(app, ["retrain", "--batch", str(batch), "--workspace", str(ws), *FAST,
                                 "--set", "validate.on_bad_rows=drop_rows"])
    assert result.exit_code in (0, 3), result.output
    batch_id = batch_id_for(batch.read_bytes())
    decision = json.loads(next((ws / "reports").glob(f"*-{batch_id}/decision.json")).read_text())
    counts = decision["details"]["validation"]["counts"]
    assert counts["dropped_bad_rows"] == 4 and counts["kept_rows"] == 11  # 3 bad + "rain today 1"
    dropped = [json.loads(line) for line in (ws / "data" / "quarantine" / batch_id / "dropped_rows.jsonl")
               .read_text().splitlines()]
    assert [d["row"] for d in dropped] == [3, 14, 15, 16]
    assert all(d["reasons"] for d in dropped)
    parts = pd.concat(pd.read_parquet(ws / "data" / "batches" / batch_id / f"{n}.parquet") for n in ("train", "test"))
    assert len(parts) == 11 and "rain today 1" not in set(parts["text"])
    assert decision["details"]["dropped_rows"].endswith(batch_id)
