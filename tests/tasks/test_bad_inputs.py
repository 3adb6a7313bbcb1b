"""Every class of bad delivery through the real `ratchet retrain` path: rejected with a
message naming the problem, exit 4, the raw bytes quarantined byte-for-byte, the
registry and production alias untouched, nothing of the batch left in data/.

One production model (the tiny BERT, saved untrained: validation only needs its label
map and tokenizer) and one accepted batch are put in place once for the module; no case
reaches training.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.intake.batch import batch_id_for, intake, split_batch, store_split
from tasks.registry.store import Registry
from tasks.core.workspace import Workspace

runner = CliRunner()
GOOD = [(f"rain today {i}", "weather") for i in range(6)] + [(f"guitar song {i}", "music") for i in range(6)]


def csv_bytes(rows, header=("text", "label"), delimiter=",") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def jsonl_bytes(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


HOSTILE = [("<script>alert(1)</script>", "weather"), ("<script>alert(1)</script>", "[/x]"),
           ("=HYPERLINK(\"http://evil\")", "music"), ("+cmd|' /C calc'!A0", "music"),
           ("@SUM(1+1)", "music"), ("<img src=x onerror=alert(1)>", "weather")]

# id, file name, bytes, --set overrides, expected check, words of its message, example rows
CASES = [
    ("not_utf8", "latin1.csv", b"text,label\nrain caf\xe9 1,weather\n" + csv_bytes(GOOD)[11:], [],
     "file_parses", "offset 19", None),
    ("unsupported_type", "batch.xlsx", b"PK\x03\x04 not a batch", [], "file_parses", "unsupported file type", None),
    ("empty_file", "empty.csv", b"", [], "file_parses", "file is empty", None),
    ("header_only", "header.csv", b"text,label\n", [], "expect_table_row_count_to_be_between", "0 rows", None),
    ("too_few_rows", "few.csv", csv_bytes(GOOD[:2] + GOOD[6:8]), [], "expect_table_row_count_to_be_between",
     "fewer than the 5 required", None),
    ("missing_label_column", "nolabel.csv", csv_bytes([(t,) for t, _ in GOOD], header=("text",)), [],
     "expect_column_to_exist", "column 'label' is missing", None),
    ("header_case", "case.csv", csv_bytes(GOOD, header=("Text", "Label")), [], "expect_column_to_exist",
     "found 'Text'", None),
    ("duplicate_header", "dup_header.csv", csv_bytes([(t, t, lab) for t, lab in GOOD], header=("text", "text", "label")),
     [], "file_parses", "more than once", None),
    ("semicolon_null_text", "semi.csv", csv_bytes(GOOD[:3] + [("", "weather")] + GOOD[3:], delimiter=";"), [],
     "expect_column_values_to_not_be_null", "null or missing", [5]),
    ("blank_text", "blank.csv", csv_bytes(GOOD[:2] + [("   \t", "weather")] + GOOD[2:]), [],
     "expect_column_values_to_not_match_regex", "whitespace-only", [4]),
    ("null_label", "nulllabel.csv", csv_bytes(GOOD + [("rain again", "")]), [],
     "expect_column_values_to_not_be_null", "column 'label'", [14]),
    ("quoted_multiline_then_long", "long.csv", csv_bytes([("two\nlines", "weather")] + GOOD + [("x" * 2500, "music")]),
     [], "expect_column_value_lengths_to_be_between", "longer than 2000 characters", [16]),
    ("one_megabyte_row", "huge.csv", csv_bytes(GOOD + [("<b>" + "y" * 1_000_000, "music")]), [],
     "expect_column_value_lengths_to_be_between", "longer than 2000", [14]),
    ("too_many_tokens", "tokens.csv", csv_bytes(GOOD + [("a " * 600, "weather")]), [],
     "text_token_length_at_most", "longer than 512 tokens", [14]),
    ("duplicate_rows", "dups.csv", csv_bytes(GOOD + GOOD[:2]), [], "rows_are_unique", "repeat an earlier row", [14, 15]),
    ("conflicting_labels", "conflict.csv", csv_bytes(GOOD + [("Rain  today 0", "music")]), [],
     "text_has_one_label", "conflicting labels", [2, 14]),
    ("near_duplicate_label", "near.csv", csv_bytes(GOOD + [(f"drizzle {i}", "Weather ") for i in range(3)]), [],
     "label_is_not_near_duplicate", "known label 'weather'", [14, 15, 16]),
    ("unknown_label_not_allowed", "unknown.csv", csv_bytes(GOOD + [(f"pizza {i}", "food") for i in range(3)]),
     ["labels.allow_new=false"], "label_is_known", "'food'", [14, 15, 16]),
    ("rare_new_label", "rare.csv", csv_bytes(GOOD + [("pizza please", "food")]), [],
     "new_label_has_min_examples", "fewer than 2 rows", [14]),
    ("label_share", "share.csv", csv_bytes(GOOD[:6] + [(f"storm {i}", "weather") for i in range(6)] + GOOD[6:8]),
     ["labels.max_label_share=0.6"], "label_share_at_most", "'weather' 86%", None),
    ("label_kl_fail", "kl.csv", csv_bytes(GOOD[:6] + [(f"storm {i}", "weather") for i in range(13)] + GOOD[6:7]),
     ["labels.kl_action=fail", "labels.max_kl=0.05"], "label_distribution_kl", "KL", None),
    ("numeric_labels_jsonl", "numbers.jsonl", jsonl_bytes([{"text": t, "label": i % 2} for i, (t, _) in enumerate(GOOD)]),
     [], "expect_column_values_to_be_of_type", "not strings", [1, 2, 3, 4, 5]),
    ("bad_jsonl_line", "broken.jsonl", jsonl_bytes([{"text": t, "label": lab} for t, lab in GOOD[:3]])
     + b'{"text": "rain", "label": \n' + jsonl_bytes([{"text": t, "label": lab} for t, lab in GOOD[3:]]), [],
     "row_is_readable", "not valid JSON", [4]),
    ("ragged_csv_row", "ragged.csv", csv_bytes(GOOD[:4] + [("rain", "weather", "extra")] + GOOD[4:]), [],
     "row_is_readable", "has 3 fields, the header has 2", [6]),
    ("control_characters", "control.csv", csv_bytes(GOOD + [("bad\x00row \x1b[31mred", "weather")]), [],
     "values_have_no_control_characters", "control characters", [14]),
    ("duplicate_ids", "ids.jsonl", jsonl_bytes([{"id": i % 10, "text": t, "label": lab} for i, (t, lab) in enumerate(GOOD)]),
     [], "expect_column_values_to_be_unique", "column 'id'", [1, 2, 11, 12]),
    ("parquet_int_text", "ints.parquet", parquet_bytes(pd.DataFrame({"text": range(12), "label": ["weather"] * 12})),
     [], "expect_column_values_to_be_of_type", "column 'text'", [1, 2, 3, 4, 5]),
    ("hostile_content", "hostile.csv", csv_bytes([(t, lab, "../../x") for t, lab in GOOD + HOSTILE],
                                                 header=("text", "label", "slice")), [],
     "text_has_one_label", "conflicting labels", [14, 15]),
    ("hostile_file_name", "my batch (1);rm.csv", csv_bytes(GOOD[:3]), [], "expect_table_row_count_to_be_between",
     "3 rows", None),
]


@pytest.fixture(scope="module")
def production_ws(tmp_path_factory, prefect_server):
    """A workspace whose production is a tiny model over weather/music, trained on (well,
    registered with) one accepted batch whose held-out rows are the exam."""
    from conftest import TINY_PARAMS, toy_frame
    from tasks.train.model import load_base, save_classifier
    from tasks.train.replay import new_buffer

    root = tmp_path_factory.mktemp("bad_inputs")
    ws_path = root / "ws"
    ws_path.mkdir()
    (ws_path / "params.yaml").write_text(TINY_PARAMS)
    ws = Workspace.at(ws_path)
    source = root / "a.csv"
    toy_frame(["weather", "music"], per_label=20, seed=1, slice_name="A").to_csv(source, index=False)
    got = intake(source, ws)
    split = split_batch(got.frame, got.batch_id, 0.2)
    store_split(split, got.batch_id, ws)
    model_dir = save_classifier(load_base("tiny", ["weather", "music"], seed=0), root / "model")
    buffer = new_buffer("reservoir", capacity=200, seed=0)  # what a promoted version carries
    buffer.add(split.train)
    buffer.save(model_dir)
    reg = Registry(ws.models_dir)
    version = reg.register(model_dir, {"parent": None, "batch_id": got.batch_id, "batch_ids": [got.batch_id],
                                       "metrics": {"overall": {"rows": 8, "accuracy": 0.5}}})
    reg.promote(version, reason="test setup")
    return ws_path


def snapshot(ws: Path) -> dict:
    models = ws / "models"
    return {"aliases": (models / "aliases.json").read_bytes(), "versions": Registry(models).versions(),
            "history": (models / "history.jsonl").read_bytes(), "exam": sorted(p.name for p in (ws / "data" / "exam").iterdir())}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_delivery_is_quarantined(case, production_ws, tmp_path):
    _, name, raw, sets, expectation, words, rows = case
    ws = production_ws
    before = snapshot(ws)
    batch = tmp_path / name
    batch.write_bytes(raw)
    args = ["retrain", "--batch", str(batch), "--workspace", str(ws)]
    for pair in sets:
        args += ["--set", pair]
    result = runner.invoke(app, args)

    assert result.exit_code == 4, result.output
    assert "quarantined" in result.output
    batch_id = batch_id_for(raw)
    decision = json.loads(next((ws / "reports").glob(f"*-{batch_id}/decision.json")).read_text())
    assert decision["status"] == "quarantined" and decision["exit_code"] == 4
    failures = decision["details"]["validation"]["failures"]
    named = [f for f in failures if f["expectation"] == expectation]
    assert named, failures
    assert any(words in f["message"] for f in named), named
    assert any(words in reason for reason in decision["reasons"]), decision["reasons"]
    if rows is not None:
        assert named[0]["examples"] == rows
    assert decision["details"]["validation"]["verdict"] == "rejected"

    kept = ws / "data" / "quarantine" / batch_id
    [raw_file] = (kept / "raw").iterdir()
    assert raw_file.read_bytes() == raw  # byte-for-byte
    assert re.fullmatch(r"[A-Za-z0-9._-]+", raw_file.name)
    assert json.loads((kept / "validation.json").read_text())["verdict"] == "rejected"
    page = (kept / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<img" not in page.lower() and "\x00" not in page
    assert snapshot(ws) == before  # registry, production alias, history and exam untouched
    assert not (ws / "data" / "batches" / batch_id).exists()


def test_hostile_content_is_escaped_and_escapes_nothing(production_ws):
    """After the hostile case ran: its report shows the text escaped, and a slice named
    ../../x created nothing outside the workspace."""
    raw = next(c for c in CASES if c[0] == "hostile_content")[2]
    kept = production_ws / "data" / "quarantine" / batch_id_for(raw)
    if not kept.exists():
        pytest.skip("runs after the table")
    page = (kept / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page
    assert not (production_ws.parent.parent / "x").exists() and not (production_ws.parent / "x").exists()


def test_the_table_covers_every_class(production_ws):
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)
