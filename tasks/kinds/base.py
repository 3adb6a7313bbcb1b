"""The task-type contract: everything that differs between a sentence classifier and a
tagger, and nothing else.

The flow (flows/retrain.py, flows/attempts.py), the training loop, the exam, the gate,
the registry, the accuracy/F1 matrix, the model card, `ratchet status`, the DVC stages and
`ratchet audit` are written once and call a `TaskKind`, looked up by `task.type` in
params.yaml. docs/architecture.md says how to add one; tests/flows/test_conformance.py
runs every registered kind (and a toy one registered only there) through the whole flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import pandas as pd

from tasks.core.config import TASK_KINDS, GateConfig, Params
from tasks.intake.batch import Intake, Split
from tasks.validate.checks import ValidationResult
from tasks.core.workspace import Workspace


@dataclass(frozen=True)
class Predictor:
    """A loaded version, as `ratchet serve-model` answers with it: `parse` checks and
    normalises one request's inputs (ValueError naming what is wrong), `predict` answers a
    list of parsed inputs, one JSON-ready answer per input, in order."""
    parse: Callable[[list], list]
    predict: Callable[[list], list[dict]]


class TaskKind(Protocol):
    name: str            # the `task.type` value
    metric: str          # the headline score in a sheet's "overall" (accuracy, f1)
    pipeline_tag: str    # the transformers pipeline a promoted version loads into (model card)
    training: Any        # the finetune stage's part: columns, head, starting point, buffer rows, teacher

    def parse(self, raw: bytes, name: str, encoding: str) -> pd.DataFrame | None:
        """A delivery's rows, or None: the default text/label table parser (with file rows)."""

    def validate(self, got: Intake, ws: Workspace, params: Params, reg, parent: str | None) -> ValidationResult:
        """Row checks of a parsed delivery against `parent` (production, or an audit's version)."""

    def split(self, rows: pd.DataFrame, batch_id: str, test_share: float, ws: Workspace,
              lineage: list[str]) -> tuple[Split, dict | None]:
        """train / dev / held-out rows (the flow stores them: held-out rows join the exam);
        leaks removed here when validation did not (their counts, or None). Writes nothing."""

    def drift(self, rows: pd.DataFrame, reference: pd.DataFrame | None, params: Params, champion_dir: Path | None,
              metadata: dict | None, out_dir: Path, heldout: pd.DataFrame | None = None):
        """The drift result the retrain policy reads (drifted, quality_dropped, headline()).
        `heldout`: the held-out rows behind production, the embeddings' reference side."""

    def store_drift_reference(self, model_dir: Path, heldout: pd.DataFrame, params: Params) -> Path | None:
        """At promotion: the candidate's vectors of the drift reference sample of its
        lineage's held-out rows, stored in `model_dir` (tasks/drift/reference.py)."""

    def evaluate(self, model_dir: Path | None, exam: pd.DataFrame, new_ids: list[str], params: Params,
                 known: dict[int, str] | None = None) -> dict:
        """Score sheets "all" / "old" / "new" ({"overall", "slices", "batches"}) and "rows"
        (per-row outcomes: the statistic's columns, correct, pred, slice, key, is_new).
        `known`: this model's answers on some rows, by position in `exam`, as "pred" holds
        them (its stored answers, tasks/judge/reuse.py): the model runs only on the other
        rows, and the sheets are those it would give answering every row."""

    def statistic(self, cfg: GateConfig):
        """What the gate tests (tasks/judge/gate_stats.py Accuracy, EntityF1)."""

    def describe(self, exam: pd.DataFrame) -> tuple[list[str], list[str]]:
        """(text, gold answer) per exam row, as flips.csv shows them."""

    def works(self, model_dir: Path) -> str | None:
        """The smoke test before promotion: None when a stored model loads and predicts."""

    def predictor(self, model_dir: Path, params: Params) -> Predictor:
        """A stored version loaded for serving (tasks/serve/): its request format and answers."""


KINDS: dict[str, TaskKind] = TASK_KINDS  # the one registry; params.yaml's task.type is checked against it


def answers(loaded, probe: dict, what: str) -> str | None:
    """A kind's smoke test: None when a loaded model (a Classifier/Tagger) answers `probe`
    with one logit per label, else `what` it failed to load into."""
    return None if loaded.model(**probe).logits.shape[-1] == len(loaded.labels) else what


def register(kind: TaskKind) -> TaskKind:
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> TaskKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"task.type: unknown task type {name!r} (known: {', '.join(sorted(KINDS))})") from None

