"""What the production model itself sees in a new batch: part of the drift stage.

Three signals need the champion (production, or the base encoder before the first
promotion) rather than the raw table:

- **tokenizer coverage**: per row, the share of `[UNK]` tokens and subword pieces per
  word under the production tokenizer; a batch in another script or jargon shows up
  here before anything else (Evidently then tests these two columns like any other);
- **embedding drift**: the champion's own mean-pooled sentence embeddings of a sample
  of the reference and of the batch, compared with one of Evidently's embedding drift
  methods called directly (its `EmbeddingsDrift` metric would also render a t-SNE
  chart that takes about a minute);
- **champion quality**: the champion's accuracy and macro-F1 on the batch's labeled
  rows whose label it knows, against the held-out accuracy recorded when it was
  promoted. A drop is the strongest reason to retrain: the world moved under it.

Embeddings and predictions come from one forward pass over at most
`drift.max_embed_rows` sampled rows of the batch, so a 100k-row batch costs the same
as a 1k-row one. The reference side is a sample of the held-out rows behind production,
whose vectors production stored when it was promoted (tasks/drift/reference.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.judge.evaluate import score
from tasks.train.model import Classifier, load_base, open_classifier
from tasks.train.stats_head import StatsHeadModel, pooled_batches, vector_key

COVERAGE_SIGNALS = ("unk_share", "pieces_per_word")


@dataclass
class Champion:
    """The model the batch is judged by, and what it scored when it was promoted."""

    clf: Classifier
    name: str  # registry version, or "base:<model.base>" before the first promotion
    recorded_accuracy: float | None  # overall held-out (exam) accuracy at promotion
    knows_labels: bool = True  # False for a bare base encoder: no quality signal
    max_length: int = 64  # model.max_length: the tokens it sees when it serves
    path: Path | None = None  # its registry directory (its stored drift reference); None for the base


@dataclass(frozen=True)
class EmbeddingDrift:
    """One Evidently embedding drift test: the whole batch or one slice of it."""

    scope: str  # "all" or the slice name
    method: str  # Evidently's method name: model | mmd | distance
    score: float | None  # ROC AUC of a reference-vs-batch classifier (model), MMD^2, cosine distance
    threshold: float
    drifted: bool
    reference_rows: int
    current_rows: int
    note: str = ""  # why there is no score (too few rows, degenerate embeddings)


@dataclass(frozen=True)
class Quality:
    """The champion's answers on the new batch's labeled rows."""

    rows_total: int  # rows in the batch
    rows_sampled: int  # rows run through the model (at most drift.max_embed_rows)
    rows_scored: int  # sampled rows whose label the champion knows
    accuracy: float | None
    macro_f1: float | None
    recorded_accuracy: float | None
    drop: float | None  # recorded minus observed accuracy; positive = worse now
    max_drop: float
    dropped: bool


def load_champion(model_dir: str | Path | None, *, base: str, metadata: dict | None, seed: int,
                  max_length: int = 64) -> Champion:
    """Production from the registry, or the base encoder when nothing is promoted yet."""
    if model_dir is None:
        clf = load_base(base, ["unknown"], seed)  # the head is never used: embeddings only
        return Champion(clf, f"base:{base}", None, knows_labels=False, max_length=max_length)
    overall = ((metadata or {}).get("metrics") or {}).get("overall") or {}
    return Champion(open_classifier(model_dir), str((metadata or {}).get("version", Path(model_dir).name)),
                    overall.get("accuracy"), max_length=max_length, path=Path(model_dir))


def coverage(clf: Classifier, texts: list[str]) -> pd.DataFrame:
    """Per row: share of [UNK] pieces and subword pieces per whitespace word."""
    tok = clf.tokenizer
    ids = tok(texts, add_special_tokens=False, truncation=False)["input_ids"]
    unk = tok.unk_token_id
    words = np.array([max(len(t.split()), 1) for t in texts], dtype=float)
    pieces = np.array([len(x) for x in ids], dtype=float)
    unks = np.array([sum(1 for i in x if i == unk) for x in ids], dtype=float)
    return pd.DataFrame({"unk_share": unks / np.maximum(pieces, 1), "pieces_per_word": pieces / words})


def encode(clf: Classifier, texts: list[str], *, batch_size: int, max_length: int) -> tuple[np.ndarray, list[str]]:
    """Mean-pooled last-layer embeddings and predicted labels, in input order, one pass."""
    model = clf.model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # less padding per batch
    dim = model.config.hidden_size
    emb = np.zeros((len(texts), dim), dtype=np.float32)
    pred = np.zeros(len(texts), dtype=int)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = clf.tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt")
            out = model(**enc, output_hidden_states=True)
            mask = enc["attention_mask"].unsqueeze(-1).to(out.hidden_states[-1].dtype)
            pooled = (out.hidden_states[-1] * mask).sum(1) / mask.sum(1).clamp(min=1)
            emb[idx] = pooled.float().numpy()
            pred[idx] = out.logits.argmax(-1).numpy()
    labels = clf.labels
    return emb, [labels[p] for p in pred]


def text_keys(texts: list[str], max_length: int) -> list[str]:
    """A sentence's key for stored vectors: its text as the encoder sees it (max_length)."""
    return [vector_key(t, max_length) for t in texts]


@torch.inference_mode()
def pooled(clf: Classifier, texts: list[str], *, batch_size: int, max_length: int) -> np.ndarray:
    """Mean-pooled last-layer vectors of `texts`, in order (`encode`'s, without answers).
    A statistics version answers from the vectors its exam computed where it has them."""
    model = clf.model
    if isinstance(model, StatsHeadModel):
        return model.pooled_vectors(clf.tokenizer, texts, max_length=max_length, batch_size=batch_size)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for idx, vectors in pooled_batches(model.base_model.eval(), clf.tokenizer, texts, range(len(texts)),
                                       max_length=max_length, batch_size=batch_size):
        out[idx] = vectors.float().cpu().numpy()
    return out


# Evidently's own thresholds, used when drift.embedding_threshold is 0
DEFAULT_THRESHOLDS = {"model": 0.55, "mmd": 0.015, "distance": 0.2}


def _method(name: str, threshold: float):
    # A fixed effect-size threshold, not Evidently's bootstrap option: with a few hundred
    # rows per side the domain classifier tells CLINC150's own train and test rows of one
    # domain apart at ROC AUC 0.55-0.6 (the bootstrap calls that drift), while a new
    # domain scores 0.93-0.99; the question is "changed materially", not "detectably".
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as m

    threshold = threshold or DEFAULT_THRESHOLDS[name]
    if name == "mmd":
        return m.mmd(threshold=threshold)
    if name == "distance":
        return m.distance(dist="cosine", threshold=threshold)
    return m.model(threshold=threshold)


def embedding_drift(ref: np.ndarray, cur: np.ndarray, *, method: str, threshold: float, scope: str,
                    min_rows: int) -> EmbeddingDrift:
    """Evidently's embedding drift `method` on two embedding matrices (never raises)."""
    def result(score=None, drifted=False, note=""):
        return EmbeddingDrift(scope, method, score, threshold or DEFAULT_THRESHOLDS[method], drifted,
                              len(ref), len(cur), note)

    if min(len(ref), len(cur)) < min_rows:
        return result(note=f"too few rows to compare (need {min_rows} on each side)")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            value, drifted, _ = _method(method, threshold)(pd.DataFrame(cur), pd.DataFrame(ref))
    except ValueError as exc:  # e.g. identical embeddings on both sides: nothing to fit
        return result(note=f"not computed: {exc}")
    value = float(value)
    return result(value if math.isfinite(value) else None, bool(drifted))


def embedding_drifts(ref_emb: np.ndarray, ref_slices: pd.Series, cur_emb: np.ndarray, cur_slices: pd.Series,
                     *, method: str, threshold: float, min_rows: int) -> list[EmbeddingDrift]:
    """The whole batch, then each slice of it (against the same slice of the reference
    when the reference has enough of it, else against the whole reference)."""
    kw = {"method": method, "threshold": threshold, "min_rows": min_rows}
    out = [embedding_drift(ref_emb, cur_emb, scope="all", **kw)]
    names = sorted(cur_slices.astype(str).unique())
    if len(names) < 2:
        return out  # one slice is the whole batch: nothing more to say
    ref_slices, cur_slices = ref_slices.astype(str).to_numpy(), cur_slices.astype(str).to_numpy()
    for name in names:
        ref_part = ref_emb[ref_slices == name]
        ref_part = ref_part if len(ref_part) >= min_rows else ref_emb
        out.append(embedding_drift(ref_part, cur_emb[cur_slices == name], scope=name, **kw))
    return out


def champion_quality(champion: Champion, gold: pd.Series, pred: list[str], *, rows_total: int,
                     max_drop: float) -> Quality | None:
    """Accuracy and macro-F1 on the rows whose label the champion knows, vs its record."""
    if not champion.knows_labels:
        return None
    gold = gold.astype(str).reset_index(drop=True)
    known = gold.isin(set(champion.clf.labels))
    scored = int(known.sum())
    if scored == 0:
        return Quality(rows_total, len(gold), 0, None, None, champion.recorded_accuracy, None, max_drop, False)
    sheet = score(gold[known], pd.Series(pred)[known])
    recorded = champion.recorded_accuracy
    drop = None if recorded is None else round(recorded - sheet.accuracy, 4)
    return Quality(rows_total, len(gold), scored, sheet.accuracy, sheet.macro_f1, recorded, drop, max_drop,
                   drop is not None and drop > max_drop)
