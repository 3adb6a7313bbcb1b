"""The exam on Dask (`evaluate.dask: local`, a real LocalCluster of 2 worker processes
through prefect-dask's task runner) gives the very sheets of the one-process exam, for
both built-in task types, with and without the champion's stored answers; and a
delivery judged with it gets the same gate decision."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

pytest.importorskip("prefect_dask", reason="the scale extra is not installed (pip install -e '.[scale]')")

from flows.exam_dask import examine_on_dask  # noqa: E402
from flows.retrain import retrain  # noqa: E402
from kinds.deliveries import DELIVERIES  # noqa: E402
from tasks.core.config import load_params, with_overrides  # noqa: E402
from tasks.judge.evaluate import load_exam  # noqa: E402
from tasks.judge.reuse import examine  # noqa: E402
from tasks.kinds import get_kind  # noqa: E402
from tasks.registry.store import Registry  # noqa: E402

DASK = {"evaluate.dask": "local", "evaluate.dask_workers": 2}


@pytest.fixture(scope="module", params=["classification", "ner"])
def promoted(request, tmp_path_factory, prefect_server, one_torch_thread):
    d = DELIVERIES[request.param]
    root = tmp_path_factory.mktemp(f"dask-{d.kind}")
    ws = root / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(d.params)
    files = [d.write(root / name, d.batches[i], seed=i + 1, slice_name=name.upper())
             for i, name in enumerate(("a", "b", "c"))]
    outcomes = [retrain(batch=str(f), workspace=str(ws)) for f in files[:2]]
    assert [o["status"] for o in outcomes] == ["promoted", "promoted"], [o["reasons"] for o in outcomes]
    return d.kind, ws, files, [o["batch_id"] for o in outcomes]


def test_sheets_on_dask_are_the_one_process_sheets(promoted):
    name, ws, _, batch_ids = promoted
    kind, reg = get_kind(name), Registry(ws / "models")
    params = load_params(ws / "params.yaml")
    exam = load_exam(ws / "data" / "exam", batch_ids)
    production = reg.path(reg.resolve("production"))
    for reuse in (False, True):
        here, how_here = examine(kind, production, exam, [batch_ids[-1]], params, reuse)
        there, how_there = examine_on_dask(kind, production, exam, [batch_ids[-1]], with_overrides(params, DASK), reuse)
        assert there == here and how_there == how_here, reuse
    assert how_here.reused == len(exam)  # the last pass answered every row from the store


@pytest.mark.slow
def test_a_delivery_judged_on_dask_gets_the_same_decision(promoted, tmp_path):
    name, ws, files, _ = promoted
    if name != "classification":
        pytest.skip("the sheets test covers the tagger; one end-to-end run is enough")
    twin = tmp_path / "ws"
    shutil.copytree(ws, twin, symlinks=True)
    here = retrain(batch=str(files[2]), workspace=str(ws))
    there = retrain(batch=str(files[2]), workspace=str(twin), overrides=DASK)
    assert (there["status"], there["reasons"]) == (here["status"], here["reasons"])
    for key in ("gate", "gate_table", "candidate_scores", "champion_scores"):
        assert there["details"][key] == here["details"][key], key
    assert pd.read_parquet(ws / "data" / "exam").shape == pd.read_parquet(twin / "data" / "exam").shape
