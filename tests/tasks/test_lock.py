"""The promotion lock survives its holder being killed (the case resume exists for)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flows.lock import file_lock

pytestmark = pytest.mark.reliability


def test_a_killed_holder_does_not_keep_the_lock(tmp_path, repo):
    models = tmp_path / "models"
    code = ("import pathlib, time\nfrom flows.lock import promotion_lock\n"
            f"with promotion_lock(pathlib.Path({str(models)!r}), 'ratchet-promote', 10):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # a plain `ratchet retrain`
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, cwd=repo)
    try:
        assert holder.stdout.readline().strip() == b"held"
    finally:
        holder.kill()
        holder.wait()
    with file_lock(models / ".promote.lock", timeout=5):  # free at once, not after a lease expires
        pass
