"""The serving follower on a machine without the training disk: it follows the S3
mirror's production (moto's server on 127.0.0.1), pulling each new version, checked
file by file, before it switches; an unreachable mirror leaves the served version."""

from __future__ import annotations

import pytest

from tasks.core.config import load_params
from tasks.registry.registry_s3 import Mirror, publish
from tasks.registry.store import Registry
from tasks.serve.follow import Follower
from tests.conftest import flow_workspace, tiny_version


@pytest.fixture
def mirror(s3_bucket) -> Mirror:
    return Mirror(f"s3://{s3_bucket}/ratchet/registry")


def test_follows_the_mirrors_production_and_keeps_serving_when_it_is_down(tmp_path_factory, mirror, monkeypatch):
    root, trainer_ws = flow_workspace(tmp_path_factory, "trainer")
    trainer = Registry(trainer_ws / "models")
    first, second = tiny_version(trainer, root, 1), tiny_version(trainer, root, 2)
    trainer.promote(first)
    publish(trainer, mirror)

    _, server_ws = flow_workspace(tmp_path_factory, "server")  # an empty registry: nothing local yet
    local = Registry(server_ws / "models")
    follower = Follower(local, load_params(server_ws / "params.yaml"), mirror=mirror)
    assert follower.refresh() and follower.current.version == first
    assert local.versions() == [first] and local.verify(first) == []
    assert not follower.refresh()  # nothing moved

    trainer.promote(second)
    publish(trainer, mirror)
    assert follower.refresh() and follower.current.version == second and follower.swaps == 1
    assert local.resolve("production") == second and "followed s3://" in local.history()[-1]["reason"]

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    assert not follower.refresh()
    assert follower.current.version == second and "mirror s3://" in follower.last_error
