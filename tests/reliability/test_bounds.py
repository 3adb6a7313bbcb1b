"""Disk and memory bounds: a delivery over `intake.max_bytes` is refused from its size
(stat, or the Content-Length of an S3 HEAD) before anything reads it, and texts longer
than `model.max_length` tokens are truncated with a count in the reports.

Guarantees proved (README, Guarantees): an oversized file is quarantined with a
`file_size_at_most` failure (exit 4, decision JSON, report) without its bytes ever being
read into memory, parsed or copied; production and the exam are untouched. Long texts
train and are examined on their first `model.max_length` tokens, and the decision's
`details.truncated_texts` says how many were cut.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import tasks.intake.batch
import tasks.core.storage
from drills import make_production, registry_is_consistent
from flows.cli import app

pytestmark = pytest.mark.reliability
runner = CliRunner()
LIMIT = 4000


def forbid_reading(monkeypatch, name: str):
    """Fail the test if anything reads the whole oversized file (by name) into memory."""
    def guard(real):
        def read(source, *a, **k):
            assert name not in str(source), f"{source} was read whole despite intake.max_bytes"
            return real(source, *a, **k)
        return read

    monkeypatch.setattr(tasks.core.storage, "read_bytes", guard(tasks.core.storage.read_bytes))
    monkeypatch.setattr(tasks.intake.batch, "read_bytes", guard(tasks.intake.batch.read_bytes))
    monkeypatch.setattr(tasks.intake.batch, "parse_table", lambda *a, **k: pytest.fail("an oversized file was parsed"))


@pytest.fixture
def ws(tmp_path):
    from conftest import TINY_PARAMS

    path, _ = make_production(tmp_path, TINY_PARAMS + f"intake: {{max_bytes: {LIMIT}}}\n")
    return path


def big_csv(path, rows: int = 400):
    from conftest import toy_frame

    toy_frame(["food", "travel"], per_label=rows // 2, seed=5).to_csv(path, index=False)
    assert path.stat().st_size > LIMIT
    return path


def test_an_oversized_local_batch_is_quarantined_unread(ws, tmp_path, prefect_server, monkeypatch):
    from tasks.intake.batch import batch_id_of

    batch = big_csv(tmp_path / "huge_delivery.csv")
    before = ((ws / "models" / "aliases.json").read_bytes(), sorted((ws / "data" / "exam").iterdir()))
    forbid_reading(monkeypatch, "huge_delivery")
    result = runner.invoke(app, ["retrain", "--batch", str(batch), "--workspace", str(ws)])

    assert result.exit_code == 4, result.output
    assert "file_size_at_most" in result.output and f"over intake.max_bytes ({LIMIT:,})" in result.output
    bid = batch_id_of(batch)
    decision = json.loads(next((ws / "reports").glob(f"*-{bid}/decision.json")).read_text())
    assert decision["status"] == "quarantined" and decision["exit_code"] == 4
    [failure] = decision["details"]["validation"]["failures"]
    assert failure["expectation"] == "file_size_at_most" and f"{batch.stat().st_size:,} bytes" in failure["message"]
    kept = ws / "data" / "quarantine" / bid
    assert json.loads((kept / "validation.json").read_text())["verdict"] == "rejected"
    assert "file_size_at_most" in (kept / "report.html").read_text()
    assert not (kept / "raw").exists()  # not copied either: the file stays where it was delivered
    assert not (ws / "data" / "batches" / bid).exists()
    assert ((ws / "models" / "aliases.json").read_bytes(), sorted((ws / "data" / "exam").iterdir())) == before
    registry_is_consistent(ws / "models")


def test_an_oversized_s3_batch_is_refused_from_its_head(ws, tmp_path, s3_bucket, monkeypatch):
    from tasks.core.storage import put_bytes

    data = big_csv(tmp_path / "x.csv").read_bytes()
    uri = f"s3://{s3_bucket}/landing/huge_delivery.csv"
    put_bytes(uri, data)
    forbid_reading(monkeypatch, "huge_delivery")
    result = runner.invoke(app, ["validate", uri, "--workspace", str(ws), "--json"])
    assert result.exit_code == 4, result.output
    got = json.loads(result.output)
    assert got["failures"][0]["expectation"] == "file_size_at_most"
    assert f"{len(data):,} bytes, over intake.max_bytes" in got["failures"][0]["message"]
    monkeypatch.undo()  # with no limit the same object is read and validated as usual
    ok = runner.invoke(app, ["validate", uri, "--workspace", str(ws), "--json", "--set", "intake.max_bytes=0"])
    assert ok.exit_code == 0 and json.loads(ok.output)["verdict"].startswith("accepted"), ok.output


def test_long_texts_are_truncated_and_counted(ws, tmp_path, prefect_server, one_torch_thread):
    from conftest import toy_frame

    frame = toy_frame(["food", "travel"], per_label=20, seed=2, slice_name="B")
    long = "pizza " + " ".join(["please can you tell me more about it"] * 12)  # ~100 tokens > max_length 32
    train_long = frame.index[frame["split"] == "train"][:5]
    test_long = frame.index[frame["split"] == "test"][:2]
    for n, i in enumerate([*train_long, *test_long]):
        frame.loc[i, "text"] = f"{long} {n}"
        frame.loc[i, "label"] = "food"
    batch = tmp_path / "long.csv"
    frame.to_csv(batch, index=False)
    assert batch.stat().st_size < LIMIT * 4
    from flows.retrain import retrain

    outcome = retrain(batch=str(batch), workspace=str(ws), overrides={"intake.max_bytes": 0})
    assert outcome["status"] in {"promoted", "rejected"}, outcome["reasons"]
    counted = outcome["details"]["truncated_texts"]
    assert counted == {"max_length": 32, "train": 5, "exam": 2}
    report = json.loads((ws / "reports" / outcome["run_id"] / "train_report.json").read_text())
    assert report["truncated_texts"] == 5
    assert pd.read_parquet(ws / "data" / "exam" / f"{outcome['batch_id']}.parquet")["text"].str.len().max() > 300
