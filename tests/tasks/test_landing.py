"""Landing zone: arrival order, batch ids, and a processed-set that survives restarts."""

from __future__ import annotations

import os

import pytest

from tasks.intake.batch import batch_id_for
from tasks.intake.landing import LandingBusy, Ledger, arrivals, ledger_path, open_ledger
from tasks.core.workspace import Workspace


def _drop(folder, name, body: bytes, mtime: float):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    os.utime(path, (mtime, mtime))
    return path


def test_local_arrivals_oldest_first_with_batch_ids(tmp_path):
    ws = Workspace.at(tmp_path)
    landing = tmp_path / "data" / "landing"
    _drop(landing, "z_first.csv", b"text,label\na,b\n", 1000)
    _drop(landing, "sub/a_second.jsonl", b'{"text":"a","label":"b"}\n', 2000)
    _drop(landing, ".uploading.csv", b"partial", 500)
    _drop(landing, "notes.txt", b"not a batch", 600)
    found = arrivals("data/landing", ws)
    assert [os.path.basename(a.path) for a in found] == ["z_first.csv", "a_second.jsonl"]
    assert found[0].batch_id == batch_id_for(b"text,label\na,b\n")


def test_ledger_claims_each_batch_id_once_and_survives_a_restart(tmp_path):
    ws = Workspace.at(tmp_path)
    landing = tmp_path / "in"
    _drop(landing, "a.csv", b"text,label\nx,y\n", 1000)
    _drop(landing, "a_again.csv", b"text,label\nx,y\n", 1500)  # same bytes, other name: one batch
    _drop(landing, "b.csv", b"text,label\nq,r\n", 2000)
    with open_ledger(ws) as ledger:
        new = ledger.new(arrivals(str(landing), ws))
        assert [a.path.rsplit("/", 1)[-1] for a in new] == ["a.csv", "b.csv"]
        ledger.claim(new[0])
        with pytest.raises(ValueError, match="already claimed"):
            ledger.claim(new[0])
    # a new process: only the ledger file on disk remembers
    restarted = Ledger(ledger_path(ws))
    assert [a.path.rsplit("/", 1)[-1] for a in restarted.new(arrivals(str(landing), ws))] == ["b.csv"]
    assert restarted.batches[new[0].batch_id]["status"] == "claimed"


def test_a_second_sweep_finds_the_ledger_busy(tmp_path):
    ws = Workspace.at(tmp_path)
    with open_ledger(ws):
        with pytest.raises(LandingBusy):
            with open_ledger(ws):
                pass


def test_s3_landing_prefix_is_listed_and_copied_locally(tmp_path, s3_bucket):
    from tasks.core.storage import put_bytes

    ws = Workspace.at(tmp_path)
    put_bytes(f"s3://{s3_bucket}/landing/one.csv", b"text,label\nhello,x\n")
    put_bytes(f"s3://{s3_bucket}/landing/skip.txt", b"ignored")
    put_bytes(f"s3://{s3_bucket}/elsewhere/two.csv", b"text,label\nbye,y\n")
    found = arrivals(f"s3://{s3_bucket}/landing", ws)
    assert [a.uri for a in found] == [f"s3://{s3_bucket}/landing/one.csv"]
    local = found[0].path
    assert open(local, "rb").read() == b"text,label\nhello,x\n"
    assert found[0].batch_id == batch_id_for(b"text,label\nhello,x\n")
    # an unchanged object is recognised by its ETag without downloading it again
    again = arrivals(f"s3://{s3_bucket}/landing", ws, {a.uri: {"fingerprint": a.fingerprint, "batch_id": "b-cached"}
                                                       for a in found})
    assert again[0].batch_id == "b-cached"
