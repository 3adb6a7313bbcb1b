"""Load test of `ratchet serve-model` through a promotion and a rollback.

Two MiniLM versions (the packaged encoder with two seeded 151-intent heads: serving cost
does not depend on what the head learned) sit in a temporary registry; a real
`ratchet serve-model` process on 127.0.0.1 answers CLINC150 test sentences, one per
request, from `concurrency` clients at once (asyncio + httpx in this process) for
`--seconds` per level. A third of the way in production is promoted to the second
version, two thirds in it is rolled back. Reported per level: requests, failed requests
(must be 0), requests/s, p50/p99 latency, how long after each alias move the first
answer from the new version came, and the mean rows per forward pass (micro-batching).
Bounded: at most `--seconds` per level and `--max-requests` in all.

    python -m benchmarks.serve [--levels 1,8,32] [--seconds 30]

writes benchmarks/results/serve.json (after every level).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.continual import machine
from benchmarks.streams import REPO

RESULTS = REPO / "benchmarks" / "results"
TOKEN = "benchmark-token"


def clinc_test() -> tuple[list[str], list[str]]:
    data = json.loads((REPO / "datasets" / "clinc150" / "data_full.json").read_text())
    texts = [text for text, _ in data["test"]]
    labels = sorted({label for _, label in data["train"]} | {"oos"})
    return texts, labels


def registry(root: Path, labels: list[str]):
    """A workspace with two MiniLM versions; production = the first."""
    from tasks.registry.store import Registry
    from tasks.train.model import load_base, save_classifier

    ws = root / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text("model: {base: minilm, max_length: 64}\n")
    reg = Registry(ws / "models")
    versions = [reg.register(save_classifier(load_base("minilm", labels, seed=seed), root / f"c{seed}"),
                             {"task": "classification", "batch_id": f"bench-{seed}", "metrics": {"overall": {}}})
                for seed in (1, 2)]
    reg.promote(versions[0])
    return ws, reg, versions


def start_server(ws: Path, port: int, log: Path, max_batch: int, max_wait_ms: float) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from flows.cli import main; main()", "serve-model", "--workspace", str(ws),
           "--port", str(port), "--poll", "0.2", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    proc = subprocess.Popen(cmd, env={**os.environ, "RATCHET_SERVE_TOKEN": TOKEN}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()}")
        time.sleep(0.5)
    raise SystemExit("the server did not start in 300 s")


async def level(url: str, reg, versions: list[str], texts: list[str], concurrency: int, seconds: float,
                budget: int) -> dict:
    first, second = versions
    records: list[tuple[float, float, int, str | None]] = []  # start, latency, status, version
    moves: dict[str, float] = {}
    stop_at = time.monotonic() + seconds
    rng = random.Random(concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop_at and len(records) < budget:
            text, start = rng.choice(texts), time.monotonic()
            try:
                reply = await http.post(f"{url}/invocations", json={"inputs": [text]})
                version = reply.json().get("version") if reply.status_code == 200 else None
                records.append((start, time.monotonic() - start, reply.status_code, version))
            except httpx.HTTPError:
                records.append((start, time.monotonic() - start, 0, None))

    async def operator() -> None:
        await asyncio.sleep(seconds / 3)
        moves["promote"] = time.monotonic()
        await asyncio.to_thread(reg.promote, second, "benchmark: promotion under load")
        await asyncio.sleep(seconds / 3)
        moves["rollback"] = time.monotonic()
        await asyncio.to_thread(reg.rollback, "benchmark: rollback under load")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, limits=limits) as http:
        health0 = (await http.get(f"{url}/health")).json()
        began = time.monotonic()
        await asyncio.gather(operator(), *(client(http) for _ in range(concurrency)))
        elapsed = time.monotonic() - began
        health = (await http.get(f"{url}/health")).json()
    ok = [r for r in records if r[2] == 200]
    latency = np.array([r[1] for r in ok]) * 1000

    def switched(at: float | None, to: str) -> float | None:
        after = [r[0] + r[1] for r in ok if at is not None and r[0] >= at and r[3] == to]
        return round(min(after) - at, 3) if after else None

    batches, rows = health["batches"] - health0["batches"], health["rows"] - health0["rows"]
    return {"concurrency": concurrency, "seconds": round(elapsed, 1), "requests": len(records),
            "failed": len(records) - len(ok), "requests_per_s": round(len(ok) / elapsed, 1),
            "p50_ms": round(float(np.percentile(latency, 50)), 1), "p99_ms": round(float(np.percentile(latency, 99)), 1),
            "answers_by_version": {v: sum(r[3] == v for r in ok) for v in versions},
            "untagged_answers": sum(r[3] not in versions for r in ok),
            "first_answer_after_promote_s": switched(moves.get("promote"), second),
            "first_answer_after_rollback_s": switched(moves.get("rollback"), first),
            "mean_rows_per_forward_pass": round(rows / batches, 2) if batches else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,8,32", help="client concurrency levels")
    parser.add_argument("--seconds", type=float, default=30.0, help="per level")
    parser.add_argument("--max-requests", type=int, default=20000, help="in all levels together")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args(argv)
    texts, labels = clinc_test()
    result = {"benchmark": "serve", "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m benchmarks.serve " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "model": "all-MiniLM-L6-v2, 151-intent head, max_length 64, fp32",
              "settings": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "poll_s": 0.2,
                           "inputs_per_request": 1, "client": "httpx.AsyncClient in the benchmark process, "
                           "on the same machine as the server"},
              "levels": []}
    with tempfile.TemporaryDirectory(prefix="ratchet-serve-") as tmp:
        root = Path(tmp)
        ws, reg, versions = registry(root, labels)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        proc = start_server(ws, port, root / "server.log", args.max_batch, args.max_wait_ms)
        try:
            budget = args.max_requests
            for concurrency in map(int, args.levels.split(",")):
                got = asyncio.run(level(f"http://127.0.0.1:{port}", reg, versions, texts, concurrency,
                                        args.seconds, budget))
                budget -= got["requests"]
                result["levels"].append(got)
                print(json.dumps(got), flush=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")
        finally:
            proc.terminate()
            proc.wait(30)
    failed = sum(lv["failed"] for lv in result["levels"])
    print(f"wrote {args.out}; failed requests: {failed}")


if __name__ == "__main__":
    main()
