"""`ratchet serve-model` as a user runs it: a real uvicorn process on 127.0.0.1 serving a
registry of tiny classifiers, followed through a promotion and a rollback under load.

The load test is bounded (a few hundred requests, at most ~60 s): zero failed requests,
every answer tagged with the version that gave it, and the tag is the truth (the answer
equals what that version predicts offline).
"""

from __future__ import annotations


import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.config import load_params
from tasks.judge.evaluate import predict_scored
from tasks.registry.store import Registry
from tasks.train.model import load_classifier
from tests.conftest import flow_workspace, tiny_version

TOKEN = "test-token-not-a-secret"
LABELS = ["weather", "music", "food"]
PROBE = "can you play the guitar for me"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root, ws = flow_workspace(tmp_path_factory, "serve")
    reg = Registry(ws / "models")
    first, second = tiny_version(reg, root, 1), tiny_version(reg, root, 2)
    reg.promote(first)
    port = free_port()
    env = {**os.environ, "RATCHET_SERVE_TOKEN": TOKEN}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", "from flows.cli import main; main()", "serve-model",
                             "--workspace", str(ws), "--port", str(port), "--poll", "0.2", "--max-inputs", "8",
                             "--max-body", "20000"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (root / "server.log").read_text()
        time.sleep(0.3)
    else:
        raise AssertionError("server did not start: " + (root / "server.log").read_text())
    yield {"url": url, "reg": reg, "versions": (first, second), "ws": ws, "log": root / "server.log"}
    proc.terminate()
    proc.wait(30)
    log.close()


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def invoke(url: str, inputs, **kw) -> httpx.Response:
    return httpx.post(f"{url}/invocations", json={"inputs": inputs}, headers=auth(), timeout=30, **kw)


def wait_for(url: str, version: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while invoke(url, [PROBE]).json()["version"] != version:
        assert time.monotonic() < deadline, f"the server did not switch to {version}"
        time.sleep(0.1)


def offline(reg: Registry, version: str) -> float:
    clf = load_classifier(reg.path(version))
    return predict_scored(clf, [PROBE], batch_size=8, max_length=32)[0]


def test_answers_in_mlflows_protocol_tagged_with_the_version(served):
    reply = invoke(served["url"], [PROBE, "is it going to rain"])
    assert reply.status_code == 200
    body = reply.json()
    first = served["versions"][0]
    assert body["version"] == reply.headers["X-Ratchet-Version"] == first
    assert [set(p) for p in body["predictions"]] == [{"label", "score"}] * 2
    assert all(p["label"] in LABELS and 0 < p["score"] <= 1 for p in body["predictions"])
    about = httpx.get(f"{served['url']}/version", headers=auth()).json()
    assert (about["version"], about["task"]) == (first, "classification")


def test_follows_a_promotion_and_a_rollback_under_load_with_no_failed_request(served):
    url, reg = served["url"], served["reg"]
    first, second = served["versions"]
    seen: list[list[tuple[str, float]]] = [[] for _ in range(4)]
    failures: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(headers=auth(), timeout=30) as http:
            while not stop.is_set():
                try:
                    reply = http.post(f"{url}/invocations", json={"inputs": [PROBE, f"request {i}"]})
                    if reply.status_code != 200:
                        failures.append(f"{reply.status_code}: {reply.text}")
                        continue
                    body = reply.json()
                    seen[i].append((body["version"], body["predictions"][0]["score"], body["predictions"][0]["label"]))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        reg.promote(second, reason="test: promotion under load")
        wait_for(url, second)
        time.sleep(1.0)
        reg.rollback(reason="test: rollback under load")
        wait_for(url, first)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not failures, failures[:5]
    answers = [a for per in seen for a in per]
    assert len(answers) > 50 and {v for v, _, _ in answers} == {first, second}
    for version in (first, second):  # the tag is the truth: the answer is that version's
        label, score = offline(reg, version)
        assert {(l, round(s, 4)) for v, s, l in answers if v == version} == {(label, round(score, 4))}
    for per in seen:  # each client saw first, then second, then first again: no flapping
        phases = [v for i, (v, _, _) in enumerate(per) if i == 0 or per[i - 1][0] != v]
        assert phases in ([first, second, first], [first, first], [first]) or phases[:3] == [first, second, first]
        assert len(phases) <= 3, phases
    health = httpx.get(f"{url}/health", headers=auth()).json()
    assert health["swaps"] >= 2 and health["last_error"] is None
    assert health["rows"] > health["batches"]  # concurrent requests shared forward passes


def test_a_version_that_fails_its_integrity_check_is_not_served(served):
    url, reg = served["url"], served["reg"]
    first, second = served["versions"]
    wait_for(url, first)
    weights = reg.path(second) / "model.safetensors"
    saved = weights.read_bytes()
    try:
        weights.write_bytes(saved[:-10] + b"0123456789")
        reg.set_alias("production", second, reason="test: a corrupted version")
        deadline = time.monotonic() + 20
        while (health := httpx.get(f"{url}/health", headers=auth()).json())["last_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert second in health["last_error"] and "integrity" in health["last_error"]
        assert invoke(url, [PROBE]).json()["version"] == first
    finally:
        weights.write_bytes(saved)
        reg.set_alias("production", first, reason="test: restored")


@pytest.mark.parametrize("send, status, says", [
    (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400, "not JSON"),
    (dict(json={"text": ["hi"]}), 400, '"inputs"'),
    (dict(json={"inputs": []}), 400, "non-empty list"),
    (dict(json={"inputs": ["fine", 42]}), 400, "inputs[1]"),
    (dict(json={"inputs": ["x"] * 9}), 413, "at most 8"),
    (dict(json={"inputs": ["x" * 30000]}), 413, "bytes"),
    (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "application/json"),
])
def test_a_bad_request_gets_a_4xx_with_a_reason(served, send, status, says):
    headers = {**auth(), **send.pop("headers", {})}
    reply = httpx.post(f"{served['url']}/invocations", headers=headers, timeout=30, **send)
    assert reply.status_code == status, reply.text
    assert says in reply.json()["message"]
    assert invoke(served["url"], [PROBE]).status_code == 200  # and the server is fine


def test_the_token_guards_every_route_but_ping(served):
    url = served["url"]
    assert httpx.get(f"{url}/ping").status_code == 200
    for method, route in (("POST", "/invocations"), ("GET", "/version"), ("GET", "/health")):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            reply = httpx.request(method, f"{url}{route}", json={"inputs": [PROBE]}, headers=headers)
            assert reply.status_code == 401 and reply.headers["WWW-Authenticate"] == "Bearer"


def test_binding_beyond_loopback_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("RATCHET_SERVE_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve-model", "--workspace", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "RATCHET_SERVE_TOKEN" in result.output
