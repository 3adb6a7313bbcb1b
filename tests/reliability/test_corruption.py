"""Corruption drills: production's weights are truncated or have one byte flipped on disk.

Guarantees proved (README, Guarantees): the damage is detected from the SHA-256 and size
recorded at registration before anything loads the version (a flipped byte would still
load and quietly predict garbage); `ratchet retrain` refuses to drift against, train
from or judge with it (exit 1, nothing written); `ratchet status` names the damaged
version and file; production cannot be moved onto it, and `ratchet rollback` moves it to
the intact previous version, which loads. For every built-in task type.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from drills import make_production, production_works
from flows.cli import app
from kinds.deliveries import DELIVERIES
from tasks.kinds import KINDS, get_kind
from tasks.registry.store import Registry, RegistryError

pytestmark = pytest.mark.reliability
runner = CliRunner()


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensors, not the header: safetensors still loads it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("damage, words", [(truncate, "truncated: model.safetensors"),
                                           (flip_byte, "hash mismatch: model.safetensors")])
def test_damaged_production_is_refused_reported_and_rolled_back(tmp_path, prefect_server, damage, words, kind):
    d = DELIVERIES[kind]
    ws, _ = make_production(tmp_path, d.params, kind)
    reg = Registry(ws / "models")
    reg.promote(reg.register(reg.path("v0001"), {**reg.metadata("v0001"), "parent": "v0001"}), reason="second")
    assert reg.aliases() == {"production": "v0002", "previous": "v0001"}
    damage(reg.path("v0002") / "model.safetensors")
    if damage is flip_byte:
        assert get_kind(kind).works(reg.path("v0002")) is None  # the bytes alone would pass: only the checksum knows

    with pytest.raises(RegistryError, match=words):
        reg.checked_path("v0002")

    status = json.loads(runner.invoke(app, ["status", "--json", "--workspace", str(ws)]).output)
    damaged = {v["version"]: v["problems"] for v in status["versions"] if not v["intact"]}
    assert list(damaged) == ["v0002"] and words in damaged["v0002"][0]
    shown = runner.invoke(app, ["status", "--workspace", str(ws)]).output
    assert "v0002:" in shown and "model.safetensors" in shown

    batch = d.write(tmp_path / "c", d.batches[1], seed=3, size=40)
    refused = runner.invoke(app, ["retrain", "--batch", str(batch), "--workspace", str(ws)])
    assert refused.exit_code == 1, refused.output
    assert "registry error" in refused.output and "v0002 failed its integrity check" in refused.output
    assert "ratchet rollback" in refused.output
    assert reg.versions() == ["v0001", "v0002"] and not (ws / "reports").exists()
    assert len(list((ws / "data" / "batches").iterdir())) == 1  # batch c was not even taken in

    back = runner.invoke(app, ["models", "promote", "v0002", "--workspace", str(ws)])
    assert back.exit_code == 2 and "integrity" in back.output  # never onto damaged bytes

    rolled = runner.invoke(app, ["rollback", "--reason", "v0002 damaged on disk", "--workspace", str(ws)])
    assert rolled.exit_code == 0, rolled.output
    assert reg.resolve("production") == "v0001" and reg.history()[-1]["reason"] == "v0002 damaged on disk"
    assert (ws / "models" / "production").resolve().name == "v0001"
    production_works(ws, kind)
