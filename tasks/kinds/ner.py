"""`task.type: ner`: pre-split words in, one IOB2 tag per word out (CoNLL-2003 style).

Rows are tokens, tags (and optional slice, split), parsed from JSONL, Parquet or CoNLL
column files. Row checks are IOB2 well-formedness and entity-type rules; leaks (a
sentence in the exam and in training) are removed when the batch is split; the drift
signals are entity-type shares, sentence descriptors, the champion's sentence
embeddings and its F1 on the batch; the gate statistic is entity micro F1 from per-row
tp/fp/fn, and a row is "correct" when its entities were found exactly (for flips).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.core.config import GateConfig, Params
from tasks.validate.context import PRODUCTION
from tasks.judge.gate_stats import EntityF1
from tasks.intake.batch import DEV_NAMES, TEST_NAMES, TRAIN_NAMES, Intake, Split, assign_split, load_train
from tasks.kinds.base import Predictor, answers, register
from tasks.ner.conll import parse_ner_bytes
from tasks.ner.drift import detect_ner_drift, store_ner_reference
from tasks.ner.evaluate import batch_types, evaluate_tagger, predict_tags
from tasks.ner.model import load_tagger
from tasks.ner.tags import spans
from tasks.ner.train import NER_COLUMNS, TAGGERS
from tasks.ner.validate import types_of_version, validate_ner
from tasks.judge.evaluate import load_exam


from tasks.validate.checks import ValidationResult
from tasks.validate.contract import normalise_all
from tasks.validate.leakage import leak_masks
from tasks.core.workspace import Workspace


def sentence_keys(frame: pd.DataFrame | None) -> pd.Series:
    """A tagger's leakage key: the sentence, normalised as texts are."""
    if frame is None or not len(frame):
        return pd.Series([], dtype=str)
    return normalise_all(frame["tokens"].map(" ".join))


def recorded_f1(metadata: dict | None) -> float | None:
    """Production's micro F1 on its own exam when it was promoted (the quality baseline)."""
    return (((metadata or {}).get("metrics") or {}).get("overall") or {}).get("f1")


def tagger_works(path: Path) -> str | None:
    """Load a stored tagger and tag once; None when it works."""
    clf = load_tagger(path)
    probe = clf.tokenizer([["ratchet", "smoke", "test"]], is_split_into_words=True, return_tensors="pt")
    return answers(clf, probe, "a working tagger")


def sentences_of(inputs: list) -> list[list[str]]:
    """A serving request's inputs: sentences as lists of words, or strings split on whitespace."""
    out = []
    for i, item in enumerate(inputs):
        words = item.split() if isinstance(item, str) else item
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"inputs[{i}]: expected a sentence (a string, or a list of non-empty words), "
                             f"got {item!r:.60}")
        out.append(words)
    return out


def tagged(words: list[str], tags: list[str]) -> dict:
    """One served answer: the words, their IOB2 tags and the entities (type, word span, text)."""
    found = sorted(spans(tags), key=lambda s: s[1])
    return {"tokens": words, "tags": tags, "entities": [
        {"type": kind, "start": start, "end": end, "text": " ".join(words[start:end])} for kind, start, end in found]}


@dataclass(frozen=True)
class Ner:
    name: str = "ner"
    metric: str = "f1"
    pipeline_tag: str = "token-classification"
    training: object = TAGGERS

    def parse(self, raw: bytes, name: str, encoding: str) -> pd.DataFrame | None:
        return parse_ner_bytes(raw, name, encoding)

    def validate(self, got: Intake, ws: Workspace, params: Params, reg=None,
                 parent: str | None = PRODUCTION) -> ValidationResult:
        version = reg.resolve("production") if parent == PRODUCTION else parent
        known = types_of_version(reg, version) if version else None
        return validate_ner(got.frame, params.ner, params.validate, known_types=known, parse_error=got.parse_error)

    def split(self, rows: pd.DataFrame, batch_id: str, test_share: float, ws: Workspace,
              lineage: list[str]) -> tuple[Split, dict | None]:
        """The `split` column, else a stable hash of the sentence (repeated sentences stay
        on one side); leaks removed by the same rules as for texts (tasks/validate/leakage.py),
        here rather than in validation because they need the sentence split first."""
        df = rows.reset_index(drop=True).copy()
        where = assign_split(df.assign(text=[" ".join(t) for t in df["tokens"]]), test_share)
        df["slice"] = df["slice"].astype(str) if "slice" in df.columns else batch_id
        df["batch_id"] = batch_id
        exam = set(sentence_keys(load_exam(ws.exam_dir, lineage) if lineage else None))
        found = leak_masks(sentence_keys(df), where, exam, set(sentence_keys(load_train(lineage, ws))))
        kept = ~pd.concat(found.values(), axis=1).any(axis=1)
        df, where = df[kept], where[kept]
        parts = Split(*(df.loc[where.isin(names), NER_COLUMNS].reset_index(drop=True)
                        for names in (TRAIN_NAMES, DEV_NAMES, TEST_NAMES)))
        return parts, {kind: int(mask.sum()) for kind, mask in found.items()}

    def drift(self, rows: pd.DataFrame, reference: pd.DataFrame | None, params: Params, champion_dir: Path | None,
              metadata: dict | None, out_dir: Path, heldout: pd.DataFrame | None = None):
        return detect_ner_drift(rows, reference, params.drift,
                                champion=load_tagger(champion_dir) if champion_dir else None, out_dir=out_dir,
                                seed=params.train.seed, max_length=params.model.max_length,
                                recorded_f1=recorded_f1(metadata), heldout=heldout, champion_dir=champion_dir)

    def store_drift_reference(self, model_dir: Path, heldout: pd.DataFrame, params: Params) -> Path | None:
        return store_ner_reference(model_dir, heldout, params.drift, params.train.seed, params.model.max_length,
                                   load_tagger(model_dir))

    def evaluate(self, model_dir: Path | None, exam: pd.DataFrame, new_ids: list[str], params: Params,
                 known: dict[int, str] | None = None) -> dict:
        clf = load_tagger(model_dir) if model_dir is not None else None
        # each sentence is scored on the entity types its own batch annotates
        return evaluate_tagger(clf, exam, new_ids, batch_size=params.evaluate.batch_size,
                               max_length=params.model.max_length, annotated=batch_types(exam), known=known)

    def statistic(self, cfg: GateConfig) -> EntityF1:
        return EntityF1(n_resamples=cfg.n_resamples)

    def describe(self, exam: pd.DataFrame) -> tuple[list[str], list[str]]:
        return [" ".join(t) for t in exam["tokens"]], [" ".join(t) for t in exam["tags"]]

    def works(self, model_dir: Path) -> str | None:
        return tagger_works(model_dir)

    def predictor(self, model_dir: Path, params: Params) -> Predictor:
        clf = load_tagger(model_dir)
        run = lambda sentences: [tagged(words, tags) for words, tags in zip(  # noqa: E731
            sentences, predict_tags(clf, sentences, batch_size=params.evaluate.batch_size,
                                    max_length=params.model.max_length))]
        return Predictor(sentences_of, run)


NER = register(Ner())
