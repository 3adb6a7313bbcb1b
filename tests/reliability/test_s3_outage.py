"""S3 outage drills: the mirror's endpoint (moto on 127.0.0.1) goes down in the middle of
uploading a version, for real: its socket is closed and clients get "connection refused".

Guarantees proved (README, Guarantees): a short outage costs retries with exponential
backoff and the run completes; a long one fails with a message naming the object and the
cause, the local registry stays as it was, the half-uploaded version is invisible on S3
and no alias names it, and `ratchet models push` completes it once S3 is back.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from typer.testing import CliRunner

import tasks.registry.registry_s3 as registry_s3
from drills import Endpoint, endpoint, make_production, registry_is_consistent  # noqa: F401 (fixture)
from tasks.registry.store import Registry
from tasks.registry.registry_s3 import Mirror, publish, pull

pytestmark = pytest.mark.reliability


def outage_after(monkeypatch, files: int, endpoint: Endpoint, mirror: Mirror, back_after: float | None):
    """Take the endpoint down once `files` files of a version are uploaded; what the
    mirror showed at that moment is returned in `seen`."""
    real, seen = registry_s3.upload_file, {}

    def upload(path, uri, **kw):
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == files + 1 and "down_at" not in seen:
            seen["aliases"], seen["versions"] = mirror.aliases()[0], mirror.versions()
            endpoint.stop()
            seen["down_at"] = time.monotonic()
            if back_after is not None:
                seen["timer"] = endpoint.restart_after(back_after)
        real(path, uri, **kw)
        if "down_at" in seen and "resumed_after" not in seen:
            seen["resumed_after"] = time.monotonic() - seen["down_at"]

    monkeypatch.setattr(registry_s3, "upload_file", upload)
    return seen


def test_a_short_outage_mid_upload_is_retried_with_backoff_and_the_run_completes(
        tmp_path, s3_bucket, endpoint, prefect_server, one_torch_thread, monkeypatch, caplog):
    from conftest import TINY_PARAMS, toy_frame
    from flows.retrain import retrain

    uri = f"s3://{s3_bucket}/registry"
    ws, _ = make_production(tmp_path, TINY_PARAMS + f"registry: {{mirror: '{uri}', endpoint_url: '{endpoint.url}'}}\n")
    mirror = Mirror(uri, endpoint.url)
    publish(Registry(ws / "models"), mirror)
    batch = tmp_path / "b.csv"
    toy_frame(["food", "travel"], per_label=20, seed=2, slice_name="B").to_csv(batch, index=False)

    seen = outage_after(monkeypatch, 2, endpoint, mirror, back_after=1.0)
    caplog.set_level(logging.DEBUG, logger="botocore.retries.standard")
    outcome = retrain(batch=str(batch), workspace=str(ws))
    seen["timer"].join()

    assert outcome["status"] == "promoted" and outcome["version"] == "v0002", outcome["reasons"]
    assert "error" not in outcome["details"]["mirror"], outcome["details"]["mirror"]
    assert seen["aliases"] == {"production": "v0001"} and seen["versions"] == ["v0001"]  # while half-uploaded
    assert seen["resumed_after"] >= 1.0  # the upload waited the outage out
    delays = [float(r.getMessage().rsplit(" ", 1)[-1]) for r in caplog.records
              if r.getMessage().startswith("Retry needed, retrying request after delay")]
    assert delays, "no botocore retry was logged"
    assert mirror.aliases()[0] == {"production": "v0002", "previous": "v0001"}
    assert mirror.versions() == ["v0001", "v0002"]
    fresh = Registry(tmp_path / "fresh" / "models")
    assert pull(mirror, fresh) == "v0002" and fresh.verify("v0002") == []
    registry_is_consistent(ws / "models")


def fake_candidate(root, tag: str):
    path = root / f"cand-{tag}"
    (path / "tokenizer").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(tag.encode() * 4096)
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    (path / "tokenizer" / "vocab.txt").write_text(f"[PAD]\n{tag}\n")
    return path


def test_a_long_outage_fails_clearly_keeps_local_state_and_a_push_completes_later(
        tmp_path, s3_bucket, endpoint, monkeypatch):
    from flows.cli import app

    uri = f"s3://{s3_bucket}/registry"
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(f"registry: {{mirror: '{uri}', endpoint_url: '{endpoint.url}'}}\n")
    reg, mirror = Registry(ws / "models"), Mirror(uri, endpoint.url)
    reg.promote(reg.register(fake_candidate(tmp_path, "a"), {"batch_id": "b-a"}))
    publish(reg, mirror)
    reg.promote(reg.register(fake_candidate(tmp_path, "b"), {"batch_id": "b-b", "parent": "v0001"}))
    local_before = (reg.aliases(), reg.history())

    seen = outage_after(monkeypatch, 2, endpoint, mirror, back_after=None)  # down for good
    result = CliRunner().invoke(app, ["models", "push", "--workspace", str(ws)])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert "S3 mirror not updated: cannot write s3://" in message and "v0002/" in message
    assert "Could not connect to the endpoint URL" in message and "retry: ratchet models push" in message
    assert (reg.aliases(), reg.history()) == local_before  # local state intact
    registry_is_consistent(ws / "models")

    monkeypatch.undo()
    endpoint.start()
    assert seen["aliases"] == {"production": "v0001"}
    assert mirror.versions() == ["v0001"] and mirror.aliases()[0] == {"production": "v0001"}  # v0002 invisible
    assert mirror.manifest("v0002") is None
    assert pull(mirror, Registry(tmp_path / "fresh" / "models")) == "v0001"

    again = CliRunner().invoke(app, ["models", "push", "--workspace", str(ws)])
    assert again.exit_code == 0, again.output
    assert mirror.aliases()[0] == {"production": "v0002", "previous": "v0001"}
    assert pull(mirror, Registry(tmp_path / "fresh2" / "models")) == "v0002"
