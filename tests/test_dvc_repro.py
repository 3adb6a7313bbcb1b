"""dvc.yaml rebuilds a promotion made by the flow, bitwise, and is then up to date: for a
sentence classifier and for a tagger (the stages call the task type's plug-in)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.registry.store import Registry


def _run(cmd: list[str], cwd: Path, threads: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    env |= {"OMP_NUM_THREADS": str(threads)} if threads else {}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _batch(task: str, path: Path) -> None:
    from conftest import toy_frame, toy_ner_frame

    if task == "ner":
        toy_ner_frame(["PER", "LOC"], sentences=60, seed=1, slice_name="A").to_json(path, orient="records", lines=True)
    else:
        toy_frame(["weather", "music"], per_label=30, seed=5, slice_name="A").to_csv(path, index=False)


@pytest.mark.parametrize("task", ["classification", "ner"])
def test_dvc_repro_reproduces_the_first_promotion(task, repo, tmp_path, prefect_api_url):
    from conftest import TINY_NER_PARAMS, TINY_PARAMS

    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copytree(repo / "tasks", ws / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(repo / "dvc.yaml", ws / "dvc.yaml")
    # dvc.yaml names every key it depends on, so start from the full params.yaml
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in yaml.safe_load(TINY_NER_PARAMS if task == "ner" else TINY_PARAMS).items():
        params[section].update(values)
    batch = ws / "data" / "landing" / ("a.jsonl" if task == "ner" else "a.csv")
    params["audit"] = {"batch": str(batch.relative_to(ws)), "parent": "none"}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copyfile(repo / ".gitignore", ws / ".gitignore")  # models/versions.dvc must not be ignored
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert _run(cmd, ws).returncode == 0
    shutil.copyfile(repo / ".dvcignore", ws / ".dvcignore")  # __pycache__ is not a code change
    shutil.copytree(repo / ".dvc" / "plots", ws / ".dvc" / "plots")  # the accuracy-matrix heatmap
    batch.parent.mkdir(parents=True)
    _batch(task, batch)

    # as in production, `ratchet retrain` in a process of its own: this one's torch state
    # (threads, and whatever earlier tests set) is not what an audit replays
    promoted = _run(["ratchet", "retrain", "--batch", str(batch), "--workspace", str(ws)], ws,
                    env={"PREFECT_API_URL": prefect_api_url})
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    meta = Registry(ws / "models").metadata("v0001")
    assert meta["dvc_data_hash"] and (ws / "data.dvc").exists() and meta["task"] == task
    assert (ws / "models" / "versions.dvc").exists() and (ws / "audit" / "metrics.json").exists()

    # CPU weights are bitwise the same only with the same torch thread count: the version
    # records it, and the audit replays it
    threads = meta["train"]["threads"]
    assert threads >= 1
    first = _run(["dvc", "repro"], ws, threads)
    assert first.returncode == 0, first.stdout + first.stderr
    promotion = json.loads((ws / "build" / "promote" / "promotion.json").read_text())
    assert promotion == {**promotion, "status": "reproduced", "version": "v0001"}
    assert promotion["weights_sha256"] == meta["weights_sha256"]

    # one metrics.json per stage, all read by `dvc metrics show`
    shown = _run(["dvc", "metrics", "show", "--json"], ws)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for stage in ("intake", "validate", "drift", "finetune", "evaluate", "gate", "promote"):
        assert f"build/{stage}/metrics.json" in shown.stdout, stage
    assert json.loads((ws / "build" / "gate" / "metrics.json").read_text())["promote"] is True
    assert json.loads((ws / "build" / "promote" / "metrics.json").read_text())["reproduced"] is True

    second = _run(["dvc", "repro"], ws, threads)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date" in second.stdout
    assert Registry(ws / "models").versions() == ["v0001"]

    # `dvc plots show` renders the per-slice accuracy, the accuracy matrix and the loss, offline
    html = _run(["dvc", "plots", "show", "-o", "plots"], ws)
    assert html.returncode == 0, html.stdout + html.stderr
    page = (ws / "plots" / "index.html").read_text()
    assert all(f"audit_{name}_csv" in page for name in ("slices", "matrix", "loss"))  # one div per plot
