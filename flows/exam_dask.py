"""The exam on Dask: a model's answers in row shards on Dask workers, through
prefect-dask's task runner (`evaluate.dask`: "local" for a LocalCluster of
`evaluate.dask_workers` processes, or a scheduler address such as tcp://host:8786).

`examine_on_dask` is a subflow whose task runner is a DaskTaskRunner: the exam rows the
model has to answer (all of a candidate's; the champion's that its stored answers do
not cover) are cut into one shard per worker, each shard answered by `answer_shard` on
a worker, and the task type then scores every row at once from those answers
(tasks/judge/reuse.py `examine`, `TaskKind.evaluate`'s `known`): the same sheets and so
the same gate decision as the one-process exam (tests/flows/test_exam_dask.py). Workers
look the task type up by name, so it must be importable there (the built-in ones are).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import flow, task

from tasks.core.config import EvaluateConfig, Params
from tasks.judge.reuse import Reuse, examine
from tasks.kinds import TaskKind, get_kind


def task_runner(cfg: EvaluateConfig):
    from prefect_dask import DaskTaskRunner

    if cfg.dask == "local":
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return DaskTaskRunner(address=cfg.dask)


@task(name="answer-shard")
def answer_shard(kind_name: str, model_dir: str, rows: pd.DataFrame, new_ids: list[str], params: Params) -> list[str]:
    """A model's answers ("pred") on one shard of exam rows, on a Dask worker."""
    import torch

    torch.set_num_threads(1)  # one thread a worker: the workers share the machine's cores
    return get_kind(kind_name).evaluate(model_dir, rows.reset_index(drop=True), new_ids, params)["rows"]["pred"]


@flow(name="exam-on-dask", validate_parameters=False)  # frames and params pass as they are
def _examine_on_dask(kind_name: str, model_dir, exam: pd.DataFrame, new_ids: list[str], params: Params,
                     reuse: bool = False) -> tuple[dict, Reuse]:
    kind, shards = get_kind(kind_name), max(1, params.evaluate.dask_workers)

    def answer(rows: pd.DataFrame) -> list[str]:
        parts = [p for p in np.array_split(np.arange(len(rows)), min(shards, len(rows))) if len(p)]
        futures = [answer_shard.submit(kind.name, str(model_dir), rows.iloc[p], new_ids, params) for p in parts]
        return [pred for future in futures for pred in future.result()]

    return examine(kind, model_dir, exam, new_ids, params, reuse, answer=answer)


def examine_on_dask(kind: TaskKind, model_dir, exam: pd.DataFrame, new_ids: list[str], params: Params,
                    reuse: bool = False) -> tuple[dict, Reuse]:
    return _examine_on_dask.with_options(task_runner=task_runner(params.evaluate))(
        kind.name, model_dir, exam, new_ids, params, reuse)
