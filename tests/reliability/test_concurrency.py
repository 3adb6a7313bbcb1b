"""Concurrency drill: four `ratchet retrain` processes on four different batches, started
at the same moment against one workspace and one Prefect server.

Guarantee proved (README, Guarantees): every run completes (the promotion lock's flock on
models/.promote.lock queues them, as for runs started by cron on one host; the Prefect
global concurrency limit that serialises runs across hosts is tested in
tests/flows/test_deploy.py, and takes tens of seconds per handover to poll here),
every decision is recorded, the registry ends consistent, and no promotion is lost or
applied twice: each run trains from and is judged against the production the previous
one left, so the last production's lineage holds every promoted batch exactly once.
For every built-in task type (tests/kinds/deliveries.py).
"""

from __future__ import annotations

import json
import pytest

from drills import CHILD_TIMEOUT, Reaped, child_env, make_production, ratchet, registry_is_consistent
from kinds.deliveries import DELIVERIES
from tasks.kinds import KINDS

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_four_runs_at_once_all_complete_and_no_promotion_is_lost(tmp_path, prefect_api_url, kind):
    from tasks.intake.batch import batch_id_for
    from tasks.registry.store import Registry

    d = DELIVERIES[kind]
    ws, first = make_production(tmp_path, d.params + "ops: {promote_limit: '', lock_timeout_seconds: 600}\n", kind)
    batches = {}
    for i, (name, about) in enumerate(zip("BCDE", d.batches[1:5])):
        path = d.write(tmp_path / name, about, seed=10 + i, slice_name=name, size=40)
        batches[batch_id_for(path.read_bytes())] = path
    env = child_env(prefect_api_url)
    children = {bid: ratchet(["retrain", "--batch", str(path), "--workspace", str(ws)], env)
                for bid, path in batches.items()}
    with Reaped(*children.values()):
        logs = {bid: child.communicate(timeout=CHILD_TIMEOUT)[0].decode() for bid, child in children.items()}
    codes = {bid: child.returncode for bid, child in children.items()}
    assert set(codes.values()) <= {0, 3}, {bid: logs[bid][-2000:] for bid, c in codes.items() if c not in (0, 3)}

    decisions = {}
    for bid in batches:  # every decision recorded, one per batch
        [path] = list((ws / "reports").glob(f"*-{bid}/decision.json"))
        decisions[bid] = json.loads(path.read_text())
        assert decisions[bid]["exit_code"] == codes[bid]
        assert json.loads((ws / "data" / "batches" / bid / "decided.json").read_text())["status"] == decisions[bid]["status"]
    promoted = {bid: d["version"] for bid, d in decisions.items() if d["status"] == "promoted"}
    assert promoted, {bid: d["reasons"] for bid, d in decisions.items()}

    reg = Registry(ws / "models")
    registry_is_consistent(ws / "models")
    assert reg.versions() == [f"v{i:04d}" for i in range(1, len(promoted) + 2)]
    assert sorted(promoted.values()) == reg.versions()[1:]  # one version per promotion, none twice
    moves = [h for h in reg.history() if h["alias"] == "production"]
    assert [m["from"] for m in moves] == [None] + [m["to"] for m in moves[:-1]]  # no move overwrote another
    assert len(moves) == 1 + len(promoted)
    final = reg.resolve("production")
    assert final == moves[-1]["to"]
    lineage = reg.metadata(final)["batch_ids"]
    assert sorted(lineage) == sorted([first, *promoted]) and len(lineage) == len(set(lineage))
    for bid, version in promoted.items():  # each built on the production before it
        parent = reg.metadata(version)["parent"]
        assert parent == next(m["from"] for m in moves if m["to"] == version)
    assert sum(1 for d in decisions.values() if d["details"].get("champion_moved")) >= len(promoted) - 1
