"""`task.type: classification`: text in, one label out (the CLINC150 demo, Banking77, FPB).

Rows are text, label (and optional slice, split). Leaks are found by validation (the
context holds the exam's texts and past training texts); the drift signals are text
descriptors, tokenizer coverage, vocabulary, the champion's embeddings and its accuracy
on the batch; the gate statistic is accuracy over per-row right/wrong outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.core.config import GateConfig, Params
from tasks.validate.context import PRODUCTION, load_context
from tasks.drift.detect import detect_drift, store_drift_reference
from tasks.drift.embed_drift import load_champion
from tasks.judge.evaluate import evaluate, predict_scored
from tasks.train.finetune import SENTENCES
from tasks.judge.gate_stats import Accuracy
from tasks.intake.batch import Intake, Split, split_batch
from tasks.kinds.base import Predictor, answers, register
from tasks.train.model import load_classifier, open_classifier
from tasks.validate.checks import ValidationResult, validate_frame
from tasks.core.workspace import Workspace


def classifier_works(path: Path) -> str | None:
    """Load a stored sentence classifier and predict once; None when it works, else what it is."""
    clf = load_classifier(path)
    return answers(clf, clf.tokenizer(["ratchet smoke test"], return_tensors="pt"), "a working classifier")


def texts_of(inputs: list) -> list[str]:
    """A serving request's inputs: non-empty strings."""
    for i, item in enumerate(inputs):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"inputs[{i}]: expected a non-empty string, got {type(item).__name__} {item!r:.40}")
    return inputs


@dataclass(frozen=True)
class Classification:
    name: str = "classification"
    metric: str = "accuracy"
    pipeline_tag: str = "text-classification"
    training: object = SENTENCES

    def parse(self, raw: bytes, name: str, encoding: str) -> pd.DataFrame | None:
        return None  # the text/label table parser, with file row numbers and malformed rows

    def validate(self, got: Intake, ws: Workspace, params: Params, reg=None,
                 parent: str | None = PRODUCTION) -> ValidationResult:
        context = load_context(ws, params, got.batch_id, parent=parent) if got.frame is not None else None
        return validate_frame(got.frame, params.validate, got.parse_error, labels=params.labels, context=context,
                              rows=got.rows, malformed=got.malformed)

    def split(self, rows: pd.DataFrame, batch_id: str, test_share: float, ws: Workspace,
              lineage: list[str]) -> tuple[Split, dict | None]:
        return split_batch(rows, batch_id, test_share), None  # leaks were removed by validation

    def drift(self, rows: pd.DataFrame, reference: pd.DataFrame | None, params: Params, champion_dir: Path | None,
              metadata: dict | None, out_dir: Path, heldout: pd.DataFrame | None = None):
        champion = load_champion(champion_dir, base=params.model.base, metadata=metadata, seed=params.train.seed,
                                 max_length=params.model.max_length) if reference is not None else None
        return detect_drift(rows, reference, params.drift, out_dir, params.train.seed, champion, heldout)

    def store_drift_reference(self, model_dir: Path, heldout: pd.DataFrame, params: Params) -> Path | None:
        return store_drift_reference(model_dir, heldout, params.drift, params.train.seed, params.model.max_length)

    def evaluate(self, model_dir: Path | None, exam: pd.DataFrame, new_ids: list[str], params: Params,
                 known: dict[int, str] | None = None) -> dict:
        clf = open_classifier(model_dir) if model_dir is not None else None
        return evaluate(clf, exam, new_ids, batch_size=params.evaluate.batch_size, max_length=params.model.max_length,
                        known=known)

    def statistic(self, cfg: GateConfig) -> Accuracy:
        return Accuracy()

    def describe(self, exam: pd.DataFrame) -> tuple[list[str], list[str]]:
        return exam["text"].astype(str).tolist(), exam["label"].astype(str).tolist()

    def works(self, model_dir: Path) -> str | None:
        return classifier_works(model_dir)

    def predictor(self, model_dir: Path, params: Params) -> Predictor:
        clf = load_classifier(model_dir)
        run = lambda texts: [{"label": label, "score": round(score, 6)}  # noqa: E731
                             for label, score in predict_scored(clf, texts, batch_size=params.evaluate.batch_size,
                                                                max_length=params.model.max_length)]
        return Predictor(texts_of, run)


CLASSIFICATION = register(Classification())
