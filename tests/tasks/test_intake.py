"""Intake: content-hash ids, raw bytes kept verbatim, parsing, split, exam, quarantine."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from tasks.intake.batch import (
    batch_id_for, intake, is_known, load_split, mark_decided, parse_bytes, quarantine, split_batch,
    store_split,
)
from tasks.core.workspace import Workspace


@pytest.fixture
def ws(workspace) -> Workspace:
    return Workspace.at(workspace)


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- batch id ------------------------------------------------------------------------

def test_batch_id_stable_and_content_derived():
    a = b"text,label\nhello,greet\n"
    assert batch_id_for(a) == batch_id_for(bytes(a))
    assert batch_id_for(a).startswith("b-")
    assert batch_id_for(a) != batch_id_for(a + b"bye,farewell\n")
    # one flipped byte is a different batch
    assert batch_id_for(a) != batch_id_for(a.replace(b"h", b"H", 1))


def test_batch_id_independent_of_file_name(ws, tmp_path):
    raw = b"text,label\nhello,greet\n"
    one = intake(_write(tmp_path / "in" / "one.csv", raw), ws)
    two = intake(_write(tmp_path / "in" / "two.csv", raw), ws)
    assert one.batch_id == two.batch_id == batch_id_for(raw)


def test_batch_ids_distinct_over_many_contents():
    ids = {batch_id_for(f"text,label\nrow {i},x\n".encode()) for i in range(500)}
    assert len(ids) == 500


# --- intake keeps raw bytes ----------------------------------------------------------

def test_intake_keeps_raw_bytes_verbatim(ws, tmp_path):
    # Odd but valid bytes: BOM, CRLF, quoted field with comma and newline, trailing spaces.
    raw = '\ufefftext,label\r\n"hello, ""world""\nagain  ",greet\r\nbye ,farewell\r\n'.encode("utf-8")
    src = _write(tmp_path / "landing" / "batch.csv", raw)
    result = intake(src, ws)
    assert result.raw_path == ws.batch_dir(result.batch_id) / "raw" / "batch.csv"
    assert result.raw_path.read_bytes() == raw
    assert result.parse_error is None
    assert list(result.frame["label"]) == ["greet", "farewell"]


def test_intake_twice_is_idempotent(ws, tmp_path):
    raw = b"text,label\nhello,greet\n"
    src = _write(tmp_path / "landing" / "b.csv", raw)
    first, second = intake(src, ws), intake(src, ws)
    assert first.batch_id == second.batch_id
    assert second.raw_path.read_bytes() == raw
    assert list((ws.batch_dir(first.batch_id) / "raw").iterdir()) == [first.raw_path]


def test_intake_non_utf8_returns_error_not_raise(ws, tmp_path):
    prefix = "text,label\ncafé,food\n".encode("utf-8")
    raw = prefix + b"caf\xe9 latin1,food\n"  # \xe9 alone is invalid UTF-8
    offset = len(prefix) + 3
    src = _write(tmp_path / "landing" / "latin.csv", raw)
    result = intake(src, ws)
    assert result.frame is None
    assert result.parse_error is not None
    assert f"offset {offset}" in result.parse_error
    # raw bytes are still kept for quarantine
    assert result.raw_path.read_bytes() == raw
    assert result.batch_id == batch_id_for(raw)


def test_intake_unsupported_extension(ws, tmp_path):
    src = _write(tmp_path / "landing" / "batch.xlsx", b"PK\x03\x04whatever")
    result = intake(src, ws)
    assert result.frame is None
    assert "unsupported" in result.parse_error and ".xlsx" in result.parse_error
    assert result.raw_path.read_bytes() == b"PK\x03\x04whatever"


# --- parsing -------------------------------------------------------------------------

def test_parse_csv_quoted_fields_and_bom():
    raw = '\ufefftext,label\n"a, b",x\n"say ""hi""",y\n"multi\nline",z\n'.encode("utf-8")
    df = parse_bytes(raw, "b.csv")
    assert list(df.columns) == ["text", "label"]  # BOM not glued onto the first header
    assert list(df["text"]) == ["a, b", 'say "hi"', "multi\nline"]
    assert list(df["label"]) == ["x", "y", "z"]


def test_parse_csv_keeps_strings_as_strings():
    # "NA", "null" and "007" are text, not missing values or numbers
    df = parse_bytes(b"text,label\nNA,null\n007,1\n", "b.CSV")
    assert list(df["text"]) == ["NA", "007"]
    assert list(df["label"]) == ["null", "1"]


def test_parse_jsonl():
    rows = [{"text": "hello", "label": "greet", "slice": "web"},
            {"text": "bye, \"friend\"", "label": "farewell", "slice": "app"}]
    raw = "\n".join(json.dumps(r) for r in rows).encode() + b"\n"
    for name in ("b.jsonl", "b.json"):
        df = parse_bytes(raw, name)
        assert df.to_dict("records") == rows


def test_parse_jsonl_with_bom():
    raw = "\ufeff".encode() + b'{"text": "a", "label": "x"}\n'
    assert parse_bytes(raw, "b.jsonl").to_dict("records") == [{"text": "a", "label": "x"}]


def test_parse_parquet(toy):
    frame = toy(["weather", "music"], per_label=5, slice_name="web")
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    df = parse_bytes(buf.getvalue(), "b.parquet")
    pd.testing.assert_frame_equal(df, frame)


def test_parse_unsupported_extension():
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        parse_bytes(b"hello", "b.txt")


def test_parse_non_utf8_names_offset():
    with pytest.raises(ValueError, match="offset 11"):
        parse_bytes(b"text,label\n\xff,x\n", "b.csv")


def test_parse_non_utf8_offset_counts_the_bom():
    """The offset is into the file as delivered, BOM included (a user opens it in a hex editor)."""
    raw = b"\xef\xbb\xbftext,label\n\xff,x\n"
    assert raw[14] == 0xFF
    with pytest.raises(ValueError, match=r"offset 14\b"):
        parse_bytes(raw, "b.csv")


def test_parse_non_utf8_offset_matches_first_bad_byte():
    """Invariant: for any position of a stray byte, the named offset is where it is."""
    rng = np.random.default_rng(3)
    body = "text,label\n" + "".join(f"row {i} caf\u00e9,x\n" for i in range(30))
    for _ in range(25):
        bom = b"\xef\xbb\xbf" if rng.random() < 0.5 else b""
        good = bom + body.encode("utf-8")
        pos = int(rng.integers(len(bom), len(good) + 1))
        while pos < len(good) and (good[pos] & 0xC0) == 0x80:  # not inside a multi-byte char
            pos += 1
        raw = good[:pos] + b"\xff" + good[pos:]
        with pytest.raises(ValueError, match=rf"offset {pos}\b"):
            parse_bytes(raw, "b.csv")


# --- split ---------------------------------------------------------------------------

def test_split_honours_split_column():
    frame = pd.DataFrame({
        "text": [f"t{i}" for i in range(8)],
        "label": list("abababab"),
        "split": ["train", "TRAIN ", "val", "validation", "test", "holdout", "training", "dev"],
    })
    split = split_batch(frame, "b-1", test_share=0.5)
    assert list(split.train["text"]) == ["t0", "t1", "t6"]
    assert list(split.dev["text"]) == ["t2", "t3", "t7"]
    assert list(split.test["text"]) == ["t4", "t5"]
    for part in (split.train, split.dev, split.test):
        assert list(part.columns) == ["text", "label", "slice", "batch_id"]
        assert (part["batch_id"] == "b-1").all()
        assert (part["slice"] == "b-1").all()  # no slice column -> the batch is the slice


def test_split_uses_slice_column_when_present(toy):
    frame = toy(["weather"], per_label=10, slice_name="web")
    split = split_batch(frame, "b-2", test_share=0.2)
    assert set(split.train["slice"]) | set(split.test["slice"]) == {"web"}
    assert len(split.test) == 3 and len(split.train) == 7


def test_split_partitions_every_row(toy):
    """Invariant: each row lands in exactly one part."""
    frame = toy(["weather", "music", "food"], per_label=20)
    frame.loc[::4, "split"] = "unknown"  # half-known split column: unknown values hash
    split = split_batch(frame, "b-3", test_share=0.3)
    parts = pd.concat([split.train, split.dev, split.test])
    assert sorted(parts["text"]) == sorted(frame["text"])


def test_split_hash_fallback_is_stable_and_near_share():
    rng = np.random.default_rng(0)
    texts = [f"utterance {i} {rng.integers(1_000_000)}" for i in range(1000)]
    frame = pd.DataFrame({"text": texts, "label": ["x"] * 1000})
    split = split_batch(frame, "b-4", test_share=0.2)
    assert len(split.dev) == 0
    assert len(split.train) + len(split.test) == 1000
    assert 0.15 <= len(split.test) / 1000 <= 0.25
    # same text -> same side, whatever else is in the batch or its order
    reshuffled = split_batch(frame.sample(frac=1, random_state=1).head(300), "b-other", 0.2)
    test_set = set(split.test["text"])
    for text in reshuffled.test["text"]:
        assert text in test_set
    for text in reshuffled.train["text"]:
        assert text not in test_set


def test_split_hash_share_extremes():
    frame = pd.DataFrame({"text": [f"x{i}" for i in range(200)], "label": "a"})
    assert len(split_batch(frame, "b", 0.0).test) == 0
    assert len(split_batch(frame, "b", 1.0).train) == 0


def test_split_unknown_values_fall_back_to_hash():
    texts = [f"row {i}" for i in range(400)]
    with_col = pd.DataFrame({"text": texts, "label": "a", "split": "mystery"})
    without = pd.DataFrame({"text": texts, "label": "a"})
    a, b = split_batch(with_col, "b", 0.3), split_batch(without, "b", 0.3)
    assert list(a.test["text"]) == list(b.test["text"])
    assert list(a.train["text"]) == list(b.train["text"])


# --- store, exam, known --------------------------------------------------------------

def test_store_split_writes_parts_and_exam(ws, toy, tmp_path):
    frame = toy(["weather", "music"], per_label=10)
    src = tmp_path / "b.csv"
    frame.to_csv(src, index=False)
    result = intake(src, ws)
    split = split_batch(result.frame, result.batch_id, 0.2)
    assert is_known(src, ws) is None
    store_split(split, result.batch_id, ws)
    assert is_known(src, ws) is None  # stored but not yet decided: a killed run reruns
    mark_decided(result.batch_id, ws, "promoted", "run-1")
    assert is_known(src, ws) == result.batch_id

    exam = pd.read_parquet(ws.exam_dir / f"{result.batch_id}.parquet")
    pd.testing.assert_frame_equal(exam, split.test)
    manifest = json.loads((ws.batch_dir(result.batch_id) / "manifest.json").read_text())
    assert manifest == {"batch_id": result.batch_id, "rows": {"train": 14, "dev": 0, "test": 6}}
    loaded = load_split(result.batch_id, ws)
    pd.testing.assert_frame_equal(loaded.train, split.train)
    pd.testing.assert_frame_equal(loaded.test, split.test)
    assert len(loaded.dev) == 0


def test_is_known_only_for_exact_bytes(ws, toy, tmp_path):
    frame = toy(["weather"], per_label=5)
    src = tmp_path / "b.csv"
    frame.to_csv(src, index=False)
    result = intake(src, ws)
    store_split(split_batch(result.frame, result.batch_id, 0.2), result.batch_id, ws)
    mark_decided(result.batch_id, ws, "rejected", "run-1")
    copy = _write(tmp_path / "elsewhere" / "renamed.csv", src.read_bytes())
    assert is_known(copy, ws) == result.batch_id
    changed = _write(tmp_path / "changed.csv", src.read_bytes() + b"extra row,weather,train\n")
    assert is_known(changed, ws) is None


def test_intake_alone_does_not_make_batch_known(ws, tmp_path):
    src = _write(tmp_path / "b.csv", b"text,label\nhi,x\n")
    intake(src, ws)
    assert is_known(src, ws) is None


# --- quarantine ----------------------------------------------------------------------

def test_quarantine_moves_folder_with_identical_bytes(ws, tmp_path):
    raw = b"text,label\n\xff\xfe broken,x\n"
    src = _write(tmp_path / "landing" / "bad.csv", raw)
    result = intake(src, ws)
    assert result.frame is None
    report = {"passed": False, "error": result.parse_error, "path": src}
    target = quarantine(result, report, ws)
    assert target == ws.quarantine_dir / result.batch_id
    assert not ws.batch_dir(result.batch_id).exists()
    assert (target / "raw" / "bad.csv").read_bytes() == raw
    saved = json.loads((target / "report.json").read_text())
    assert saved["passed"] is False and saved["error"] == result.parse_error
    assert saved["path"] == str(src)  # non-JSON values are stringified, not fatal
    assert is_known(src, ws) is None


def test_quarantine_twice_replaces_previous(ws, tmp_path):
    raw = b"text,label\n\xff,x\n"
    src = _write(tmp_path / "bad.csv", raw)
    quarantine(intake(src, ws), {"n": 1}, ws)
    target = quarantine(intake(src, ws), {"n": 2}, ws)
    assert json.loads((target / "report.json").read_text()) == {"n": 2}
    assert (target / "raw" / "bad.csv").read_bytes() == raw



# --- compressed deliveries -----------------------------------------------------------

CSV = b"text,label\nhello there,greet\nbye now,farewell\n"


@pytest.mark.parametrize("suffix, pack", [(".gz", "gzip"), (".bz2", "bz2"), (".xz", "lzma")])
def test_a_compressed_delivery_is_read_as_the_file_inside_and_kept_as_delivered(ws, tmp_path, suffix, pack):
    import importlib

    packed = importlib.import_module(pack).compress(CSV)
    got = intake(_write(tmp_path / f"b.csv{suffix}", packed), ws)
    assert got.parse_error is None and got.frame["label"].tolist() == ["greet", "farewell"]
    assert got.rows == [2, 3]  # line numbers of the file inside
    assert got.raw_path.read_bytes() == packed and got.raw_path.name == f"b.csv{suffix}"  # verbatim
    assert got.batch_id == batch_id_for(packed) != batch_id_for(CSV)


def test_a_compressed_delivery_that_is_corrupt_or_inflates_past_max_bytes_is_a_parse_error(ws, tmp_path):
    import gzip

    bad = intake(_write(tmp_path / "bad.csv.gz", gzip.compress(CSV)[:-12]), ws)
    assert bad.frame is None and "cannot be decompressed" in bad.parse_error
    bomb = gzip.compress(b"text,label\n" + b"a,b\n" * 100_000)  # ~400 kB inside a ~1 kB file
    refused = intake(_write(tmp_path / "bomb.csv.gz", bomb), ws, max_bytes=50_000)
    assert refused.frame is None and "intake.max_bytes" in refused.parse_error
    assert refused.raw_path.read_bytes() == bomb  # kept, to be quarantined byte for byte
    zst = intake(_write(tmp_path / "b.csv.zst", b"\x28\xb5\x2f\xfd"), ws)
    assert "zstd files are not read" in zst.parse_error


def test_the_landing_zone_picks_up_compressed_deliveries():
    from tasks.intake.batch import is_supported

    assert all(map(is_supported, ["a.csv", "a.csv.gz", "a.jsonl.bz2", "a.parquet.xz", "A.CSV.GZ"]))
    assert not any(map(is_supported, ["a.gz", "a.txt.gz", "a.csv.part", "a.zip"]))


def test_a_task_types_own_parser_reads_the_file_inside_too(tmp_path):
    import gzip

    from tasks.intake.batch import parse_delivery
    from tasks.ner.conll import parse_ner_bytes

    line = json.dumps({"tokens": ["Alice", "flew"], "tags": ["B-PER", "O"]}).encode() + b"\n"
    got = parse_delivery(gzip.compress(line * 3), "ner.jsonl.gz", "utf-8", "b-x", tmp_path / "ner.jsonl.gz",
                         parse_ner_bytes)
    assert got.parse_error is None and got.frame["tokens"].map(list).tolist() == [["Alice", "flew"]] * 3
