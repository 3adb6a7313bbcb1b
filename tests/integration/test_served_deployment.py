"""A real Prefect server, `ratchet serve`, and runs triggered from the Prefect CLI.

`prefect server start` runs on 127.0.0.1 (SQLite; PostgreSQL too when one answers on
127.0.0.1:5432), `ratchet serve` serves the deployments in a second process, and
`prefect deployment run retrain/ratchet-retrain --param batch=...` triggers runs, as an
operator or a data team would. The test then reads the flow runs and their artifacts
back through the Prefect client, the registry from disk, and the webhook's JSON from a
receiver on 127.0.0.1. The environment of the test session is left alone: the server's
URL goes only into the subprocesses' environments and a temporary client setting.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import REPO, TINY_PARAMS, toy_frame
from webhook_receiver import Hook

from tasks.registry.store import Registry

STARTUP_SECONDS = 300  # a loaded shared CI box can take minutes to start a server
RUN_SECONDS = 600
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(home: Path, api_url: str | None, db_url: str | None = None) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           # no cron runs during a test; manual runs need no scheduler
           "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if db_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
    return env


def _wait(check, seconds: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited {proc.returncode}\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(1)
    raise AssertionError(f"{what}: not within {seconds} s\n{log.read_text()[-3000:] if log else ''}")


@contextmanager
def _process(cmd: list[str], env: dict, log: Path, cwd: Path):
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def served(root: Path, db_url: str | None = None, params: str = TINY_PARAMS):
    """A Prefect server and `ratchet serve` for a fresh workspace under `root`."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = root / "prefect-home"
    home.mkdir()
    db_url = db_url or f"sqlite+aiosqlite:///{root / 'prefect.db'}"
    ws = root / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(params)
    server_env = _env(home, None, db_url)
    with _process([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                  server_env, root / "server.log", root) as server:
        def healthy():
            try:
                return httpx.get(f"{api}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(healthy, STARTUP_SECONDS, "prefect server start", server, root / "server.log")
        env = _env(home, api)
        with _process([sys.executable, "-m", "flows.cli", "serve", "--workspace", str(ws)], env,
                      root / "serve.log", ws) as serve:
            def deployed():
                got = httpx.get(f"{api}/deployments/name/retrain/ratchet-retrain", timeout=5)
                return got.status_code == 200

            _wait(deployed, STARTUP_SECONDS, "ratchet serve", serve, root / "serve.log")
            yield {"api": api, "env": env, "ws": ws, "root": root}


def trigger(srv: dict, *batches: Path) -> list[str]:
    """`prefect deployment run ... --param batch=...`, one CLI process per batch, all at
    once; returns the flow run ids."""
    procs = [subprocess.Popen([sys.executable, "-m", "prefect", "deployment", "run", "retrain/ratchet-retrain",
                               "--param", f"batch={batch}"], env=srv["env"], cwd=srv["ws"], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for batch in batches]
    ids = []
    for proc in procs:
        out, _ = proc.communicate(timeout=STARTUP_SECONDS)
        assert proc.returncode == 0, out
        ids.append(re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1))
    return ids


@contextmanager
def client_for(api: str):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            yield client


def wait_for_runs(srv: dict, ids: list[str]) -> list:
    with client_for(srv["api"]) as client:
        def finished():
            runs = [client.read_flow_run(i) for i in ids]
            return runs if all(r.state and r.state.type.value in TERMINAL for r in runs) else None

        return _wait(finished, RUN_SECONDS, "flow runs", log=srv["root"] / "serve.log")


def artifact_keys(srv: dict, flow_run_id: str) -> set[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with client_for(srv["api"]) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key for a in found}


def decisions(ws: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((ws / "reports").glob("*/decision.json"))]


def _batch(root: Path, name: str, labels: list[str], seed: int) -> Path:
    path = root / f"{name}.csv"
    toy_frame(labels, per_label=30, seed=seed, slice_name=name).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def sqlite_served(tmp_path_factory):
    hook = Hook()
    root = tmp_path_factory.mktemp("served")
    try:
        with served(root, params=TINY_PARAMS + f"ops: {{webhook_url: '{hook.url}', watch_interval_seconds: 0}}\n") as srv:
            yield {**srv, "hook": hook}
    finally:
        hook.close()


def test_cli_trigger_promotes_and_publishes_artifacts(sqlite_served):
    srv = sqlite_served
    batch = _batch(srv["root"], "A", ["weather", "music"], seed=1)
    (run_id,) = trigger(srv, batch)
    (run,) = wait_for_runs(srv, [run_id])
    assert run.state.type.value == "COMPLETED", (srv["root"] / "serve.log").read_text()[-3000:]
    (decision,) = decisions(srv["ws"])
    assert decision["status"] == "promoted" and decision["version"] == "v0001"
    assert decision["batch_id"] in run.name  # the flow run name carries the batch id
    assert Registry(srv["ws"] / "models").resolve("production") == "v0001"
    assert {"ratchet-decision", "ratchet-gate", "ratchet-drift-report"} <= artifact_keys(srv, run_id)
    (sent,) = srv["hook"].received
    assert sent["status"] == "promoted" and sent["version"] == "v0001" and sent["flow_run_id"] == run_id


def test_two_triggers_at_once_give_two_decisions_and_a_consistent_registry(sqlite_served):
    srv = sqlite_served
    before = len(decisions(srv["ws"]))
    batches = [_batch(srv["root"], "B", ["food", "travel"], seed=2), _batch(srv["root"], "C", ["bank", "sport"], seed=3)]
    ids = trigger(srv, *batches)
    runs = wait_for_runs(srv, ids)
    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"]
    new = decisions(srv["ws"])[before:]
    assert len(new) == 2 and {d["status"] for d in new} <= {"promoted", "rejected"}
    reg = Registry(srv["ws"] / "models")
    promoted = [d for d in new if d["status"] == "promoted"]
    assert reg.versions() == [f"v{i:04d}" for i in range(1, 2 + len(promoted))]  # no number taken twice
    # each promotion moved production from the one before it: none was lost or overtaken
    moves = [m for m in reg.history() if m["alias"] == "production"]
    assert [m["from"] for m in moves] == [None, *[m["to"] for m in moves[:-1]]]
    production = reg.resolve("production")
    assert not reg.verify(production)
    lineage = reg.metadata(production)["batch_ids"]
    assert all(d["batch_id"] in lineage for d in promoted)  # the later run built on the earlier one
    for version in reg.versions()[1:]:
        assert reg.metadata(version)["parent"] == f"v{int(version[1:]) - 1:04d}"
    assert len(srv["hook"].received) == 3


@pytest.mark.slow  # several Prefect CLI start-ups; config validation rather than behaviour
def test_prefect_yaml_deploys_to_process_and_kubernetes_pools(sqlite_served):
    """`prefect deploy` accepts prefect.yaml for both pools (no worker runs them here);
    last in this module: it replaces the served deployments of the same names."""
    srv = sqlite_served
    env = {**srv["env"], "RATCHET_REPO": str(REPO), "RATCHET_WORKSPACE": str(srv["ws"]),
           "RATCHET_IMAGE": "ratchet:cuda", "RATCHET_LANDING": "s3://ratchet/landing"}

    def prefect(*args):
        done = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=RUN_SECONDS)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    prefect("work-pool", "create", "ratchet-process", "--type", "process")
    prefect("work-pool", "create", "ratchet-k8s", "--type", "kubernetes",
            "--base-job-template", str(REPO / "infra" / "k8s" / "base-job-template.json"))
    names = [f"{n}{suffix}" for suffix in ("", "-k8s") for n in ("ratchet-retrain", "ratchet-nightly", "ratchet-watch")]
    prefect("--no-prompt", "deploy", *[arg for n in names for arg in ("--name", n)])

    def deployment(flow_name: str, name: str) -> dict:
        return httpx.get(f"{srv['api']}/deployments/name/{flow_name}/{name}", timeout=10).json()

    local = deployment("sweep-landing", "ratchet-nightly")
    assert local["work_pool_name"] == "ratchet-process" and local["parameters"] == {"workspace": str(srv["ws"])}
    assert local["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    gpu = deployment("retrain", "ratchet-retrain-k8s")
    assert gpu["work_pool_name"] == "ratchet-k8s" and gpu["job_variables"]["gpu_count"] == 1
    sweep = deployment("sweep-landing", "ratchet-watch-k8s")
    assert sweep["parameters"]["fan_out"] is True and sweep["job_variables"]["gpu_count"] == 0


def _admin(statement: str) -> None:
    import asyncio

    import asyncpg

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user=os.environ.get("PGUSER", "postgres"),
                                     password=os.environ.get("PGPASSWORD"), database="postgres", timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _postgres_url() -> str:
    """A fresh database on 127.0.0.1:5432, or a skip naming why there is none."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.skip("no PostgreSQL server reachable at 127.0.0.1:5432")
    user = os.environ.get("PGUSER", "postgres")
    name = f"ratchet_{uuid.uuid4().hex[:10]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # reachable but not ours to use
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 refused to create a test database: {exc}")
    password = f":{os.environ['PGPASSWORD']}" if os.environ.get("PGPASSWORD") else ""
    return f"postgresql+asyncpg://{user}{password}@127.0.0.1:5432/{name}"


@pytest.fixture
def postgres_url():
    url = _postgres_url()
    yield url
    _admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.mark.slow  # a second server and serve process; SQLite covers the same path in the fast tier
def test_cli_trigger_on_a_postgres_backed_server(tmp_path, postgres_url):
    db_url = postgres_url
    with served(tmp_path, db_url=db_url, params=TINY_PARAMS + "ops: {watch_interval_seconds: 0}\n") as srv:
        (run_id,) = trigger(srv, _batch(tmp_path, "A", ["weather", "music"], seed=1))
        (run,) = wait_for_runs(srv, [run_id])
        assert run.state.type.value == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
        assert [d["status"] for d in decisions(srv["ws"])] == ["promoted"]
        assert "ratchet-decision" in artifact_keys(srv, run_id)

