"""Helpers shared by the reliability drills: a workspace with a production model, and
child `ratchet` processes that the drills kill, run at once, or starve of S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# generous: on a 2-core box shared with other jobs a child takes minutes just to import
CHILD_TIMEOUT = 1200
HERE = Path(__file__).resolve().parent


def make_production(root: Path, params: str, kind: str = "classification") -> tuple[Path, str]:
    """A workspace whose production v0001 is a tiny model of task type `kind` (saved
    untrained: cheap, and still a real, loadable, checksummed version) registered with
    one accepted batch A (weather/music; PER/LOC sentences for ner), whose held-out rows
    are the exam. Returns (workspace, batch A id)."""
    from kinds.deliveries import DELIVERIES
    from tasks.core.config import load_params, with_overrides
    from tasks.intake.batch import intake, store_split
    from tasks.kinds import get_kind
    from tasks.train.model import save_classifier
    from tasks.registry.store import Registry
    from tasks.train.replay import new_buffer
    from tasks.core.workspace import Workspace

    d, plug = DELIVERIES[kind], get_kind(kind)
    ws_path = root / "ws"
    ws_path.mkdir(parents=True)
    (ws_path / "params.yaml").write_text(params)
    ws = Workspace.at(ws_path)
    got = intake(d.write(root / "a", d.batches[0], seed=1, slice_name="A", size=40), ws, parser=plug.parse)
    split, _ = plug.split(got.frame, got.batch_id, 0.2, ws, [])
    store_split(split, got.batch_id, ws)  # as the flow's split step does
    start = with_overrides(load_params(ws.params_path), {"train.seed": 0})
    model, _, _ = plug.training.starting_point(None, split.train, start)  # the base, head over batch A's labels
    model_dir = save_classifier(model, root / "model")
    buffer = new_buffer("reservoir", capacity=200, seed=0)
    buffer.add(plug.training.to_buffer(split.train))
    buffer.save(model_dir)
    reg = Registry(ws.models_dir)
    version = reg.register(model_dir, {"parent": None, "batch_id": got.batch_id, "batch_ids": [got.batch_id],
                                       "task": plug.name, "metric": plug.metric,
                                       "metrics": {"overall": {"rows": len(split.test), plug.metric: 0.5}}})
    reg.promote(version, reason="drill setup")
    return ws_path, got.batch_id


def production_works(ws: Path, kind: str = "classification") -> None:
    """The task type's own smoke test on whatever version the production link names."""
    from tasks.kinds import get_kind

    assert get_kind(kind).works(ws / "models" / "production") is None


def child_env(api_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a child `ratchet`: this checkout first on the path, one torch
    thread (two processes' OpenMP pools on a busy 2-core box run ~100x slower), and the
    session's Prefect server so no child spends 10-20 s starting its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def ratchet(args: list[str], env: dict[str, str], fault: str | None = None, **popen) -> subprocess.Popen:
    """Start `ratchet ARGS` as a child process (armed with a kill point when `fault`)."""
    cmd = [sys.executable, str(HERE / "faults.py"), fault] if fault else [sys.executable, "-m", "flows.cli"]
    return subprocess.Popen([*cmd, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            **popen)


def registry_is_consistent(models: Path) -> str:
    """Check the registry invariants a crash must never break; returns production.
    Every alias names a complete version whose files match their recorded checksums, and
    no half-written version is listed."""
    from tasks.registry.store import Registry

    reg = Registry(models)
    production = reg.resolve("production")
    assert production, "production alias lost"
    for alias, version in reg.aliases().items():
        assert version in reg.versions(), f"{alias} -> {version}, which is not a complete version"
        assert reg.verify(version) == [], (alias, version, reg.verify(version))
    for version in reg.versions():
        assert (reg.path(version) / "metadata.json").exists() and reg.verify(version) == [], version
    return production


class Endpoint:
    """A moto S3 server on 127.0.0.1 that a drill can take down (its socket closed:
    clients get "connection refused", as from a crashed MinIO) and bring back on the same
    port. moto keeps its state in this process, so objects survive the restart."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()  # stops serving; closing the socket makes it refuse connections
        self.server._server.server_close()

    def restart_after(self, seconds: float):
        import threading

        timer = threading.Timer(seconds, self.start)
        timer.start()
        return timer


class Reaped:
    """`with Reaped(children):` SIGKILLs and reaps any child still running when the block
    ends (a failed assertion must not leave a `ratchet` running behind the test session)."""

    def __init__(self, *children: subprocess.Popen) -> None:
        self.children = children

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def endpoint(s3_server):
    """An S3 endpoint of its own over the session's moto state, so a drill can take it
    down while the session's server stays up for the other tests (import it into a drill)."""
    server = Endpoint()
    yield server
    try:
        server.stop()
    except Exception:
        pass
