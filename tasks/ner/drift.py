"""Drift of a NER batch against the sentences behind production (`task.type: ner`).

Signals, one row per sentence, tested by Evidently exactly as the classification path
tests its columns (tasks/drift/column_drift.py): the sentence's entity types (categorical,
"LOC+PER" or "O"), tokens per sentence, tokenizer coverage under production's tokenizer
(share of [UNK] pieces, sub-words per word) and the text itself. Beside them: the
entity-type distribution over mentions (Jensen-Shannon distance of the type shares;
entity types never seen before fire on their own) and embedding drift of production's
mean-pooled last layer (Evidently's embedding methods, tasks/drift/embed_drift.py).
The batch counts as drifted on new types, drifted embeddings, a type-share distance of
0.1 or more, or at least `drift.drift_share` of the column tests.

Quality: production tags up to `drift.max_embed_rows` of the batch's sentences; when its
entity micro F1 there (over the types it knows) is more than `drift.max_quality_drop`
below the F1 recorded on its own exam at promotion, `quality_dropped` is set and the
retrain policy (tasks/drift/policy.py) treats it as the classification path's quality drop.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.drift.column_drift import ColumnDrift, column_drifts
from tasks.core.config import DriftConfig
from tasks.drift.detect import sample_rows
from tasks.drift.embed_drift import EmbeddingDrift, coverage, embedding_drift
from tasks.drift.reference import reference_embeddings, store_reference
from tasks.train.stats_head import vector_key
from tasks.train.model import Classifier
from tasks.ner.evaluate import evaluate_tagger, predict_tags
from tasks.ner.tags import spans, types_of

TYPE_SHARE_THRESHOLD = 0.1  # Jensen-Shannon distance (base 2) of mention shares per type


@dataclass(frozen=True)
class NerDrift:
    drifted: bool
    signals: list[str]
    reason: str
    new_types: list[str]
    type_shares: dict[str, dict[str, float]]  # reference/current -> type -> share of mentions
    type_distance: float | None
    columns: list[ColumnDrift] = field(default_factory=list)
    embeddings: list[EmbeddingDrift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sampled: bool = False  # a side was sampled down to drift.max_*_rows
    json_path: str | None = None
    quality_dropped: bool = False
    # production's micro F1 on the batch (types it knows) vs the F1 recorded at promotion
    quality: dict | None = None
    # the embedding reference: rows, used, sampled, stored (read from production's file), computed
    embedded_reference: dict | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        for col in data["columns"]:
            col["score"] = col["score"] if math.isfinite(col["score"]) else None
        return data

    def headline(self) -> dict:
        # the keys the CLI prints for a classification batch, too
        return {"drifted": self.drifted, "quality_dropped": self.quality_dropped, "sampled": self.sampled,
                "json_path": self.json_path, "signals": self.signals, "reason": self.reason,
                "new_types": self.new_types, "type_distance": self.type_distance,
                "scores": {c.column: c.score for c in self.columns} | {
                    f"embedding[{e.scope}]": e.score for e in self.embeddings}}


def type_shares(frame: pd.DataFrame) -> dict[str, float]:
    mentions = Counter(kind for tags in frame["tags"] for kind, _, _ in spans(list(tags)))
    total = sum(mentions.values())
    return {k: round(v / total, 4) for k, v in sorted(mentions.items())} if total else {}


def js_distance(p: dict[str, float], q: dict[str, float]) -> float:
    from scipy.spatial.distance import jensenshannon

    keys = sorted(set(p) | set(q))
    if not keys:
        return 0.0
    return round(float(jensenshannon([p.get(k, 0.0) for k in keys], [q.get(k, 0.0) for k in keys], base=2)), 4)


def signals(frame: pd.DataFrame, clf: Classifier | None) -> pd.DataFrame:
    """One row per sentence: label (its entity types), text, tokens, and coverage when a model is given."""
    text = [" ".join(t) for t in frame["tokens"]]
    out = pd.DataFrame({"label": ["+".join(types_of(g)) or "O" for g in frame["tags"]], "text": text,
                        "tokens": [float(len(t)) for t in frame["tokens"]]})
    return out.join(coverage(clf, text)) if clf is not None else out


def sentence_embeddings(clf: Classifier, sentences: list[list[str]], *, max_length: int, batch_size: int = 64):
    """Mean-pooled last hidden layer per sentence (the encoder under the tagging head), by
    the pass that tags them (`predict_tags`), so both sides of drift pool alike."""
    out = np.zeros((len(sentences), clf.model.config.hidden_size), dtype=np.float32)
    predict_tags(clf, sentences, batch_size=batch_size, max_length=max_length, pooled=out)
    return out


def vector_keys(frame: pd.DataFrame, max_length: int) -> list[str]:
    """A sentence's key for stored vectors: its tokens as the encoder sees them."""
    return [vector_key("\x1f".join(map(str, t)), max_length) for t in frame["tokens"]]


def _embedder(clf: Classifier, max_length: int):
    return lambda f: sentence_embeddings(clf, [list(t) for t in f["tokens"]], max_length=max_length)


def store_ner_reference(model_dir: Path, heldout: pd.DataFrame, cfg: DriftConfig, seed: int,
                        max_length: int, tagger: Classifier) -> Path | None:
    """At promotion: the candidate tagger's vectors of the reference sample of its
    lineage's held-out sentences (tasks/drift/reference.py)."""
    return store_reference(model_dir, heldout, vector_keys(heldout, max_length), cap=cfg.max_embed_rows,
                           seed=seed, embed=_embedder(tagger, max_length))


def champion_quality(champion: Classifier, sentences: pd.DataFrame, recorded_f1: float | None,
                     max_drop: float, max_length: int, tags: list[list[str]] | None = None) -> dict:
    """Production's entity micro F1 on the batch's sentences, over the types it knows and
    the batch annotates (a type it has never seen is the drift signal's business). `tags`:
    its answers on them, when the embedding pass already gave them."""
    # scored on the types both production knows and the batch annotates (names in its tags)
    types = set(types_of(champion.labels)) & set(types_of(t for tags in sentences["tags"] for t in tags))
    frame = sentences.assign(slice="batch", batch_id="batch")
    given = {i: " ".join(t) for i, t in enumerate(tags)} if tags is not None else None
    sheet = evaluate_tagger(champion, frame, "batch", batch_size=64, max_length=max_length,
                            annotated={"batch": types}, known=given)["all"]["overall"]
    f1, mentions = sheet["f1"], sheet["support"]
    dropped = bool(recorded_f1 is not None and mentions and recorded_f1 - f1 > max_drop)
    return {"f1": f1, "recorded_f1": recorded_f1, "sentences": len(frame), "mentions": int(mentions),
            "max_drop": max_drop, "dropped": dropped}


def detect_ner_drift(current: pd.DataFrame, reference: pd.DataFrame | None, cfg: DriftConfig, *,
                     champion: Classifier | None, out_dir: Path | None, seed: int, max_length: int = 64,
                     recorded_f1: float | None = None, heldout: pd.DataFrame | None = None,
                     champion_dir: Path | None = None) -> NerDrift:
    """Compare a batch's sentences with those behind production; write drift.json (and
    Evidently's drift.html) to out_dir. `recorded_f1`: production's micro F1 on its exam
    at promotion, for the quality signal. The embeddings' reference side is drawn from
    `heldout` (the held-out sentences behind production) when given, else `reference`,
    with the vectors production stored at `champion_dir` where present."""
    if reference is None or not len(reference):
        result = NerDrift(True, ["first_batch"], "no reference (first batch): everything is new",
                          types_of(t for g in current["tags"] for t in g), {"current": type_shares(current)}, None)
        return _write(result, out_dir, None)
    cur = sample_rows(current.reset_index(drop=True), cfg.max_current_rows, seed)
    ref = sample_rows(reference.reset_index(drop=True), cfg.max_reference_rows, seed)
    shares = {"reference": type_shares(ref), "current": type_shares(cur)}
    distance = js_distance(shares["reference"], shares["current"])
    new = sorted(set(types_of(t for g in current["tags"] for t in g)) - set(types_of(t for g in reference["tags"]
                                                                                        for t in g)))
    notes: list[str] = []
    snapshot, _, columns = column_drifts(signals(cur, champion), signals(ref, champion), drift_share=cfg.drift_share,
                                         notes=notes)
    embeddings, quality, embedded_reference = [], None, None
    if champion is not None:
        cur_e = sample_rows(cur, cfg.max_embed_rows, seed)
        base = heldout.reset_index(drop=True) if heldout is not None and len(heldout) else ref
        ref_e = reference_embeddings(base, vector_keys(base, max_length), cap=cfg.max_embed_rows, seed=seed,
                                     model_dir=champion_dir, embed=_embedder(champion, max_length))
        # one pass over the batch's sample: production's tags (quality) and its embeddings
        cur_vectors = np.zeros((len(cur_e), champion.model.config.hidden_size), dtype=np.float32)
        tags = predict_tags(champion, [list(t) for t in cur_e["tokens"]], batch_size=64, max_length=max_length,
                            pooled=cur_vectors)
        embeddings.append(embedding_drift(ref_e.vectors, cur_vectors, method=cfg.embedding_method,
                                          threshold=cfg.embedding_threshold, scope="all",
                                          min_rows=min(cfg.min_slice_rows, 20)))
        embedded_reference = ref_e.sampling(len(base))
        quality = champion_quality(champion, cur_e, recorded_f1, cfg.max_quality_drop, max_length, tags)
    fired = [c.column for c in columns if c.drifted]
    share_hit = bool(columns) and len(fired) / len(columns) >= cfg.drift_share
    why = ([f"new entity types: {', '.join(new)}"] if new else []) + \
        ([f"entity-type shares moved (JS distance {distance:.3f} >= {TYPE_SHARE_THRESHOLD})"]
         if distance >= TYPE_SHARE_THRESHOLD else []) + \
        ([f"{len(fired)} of {len(columns)} column tests drifted ({', '.join(fired)})"] if share_hit else []) + \
        [f"embeddings drifted ({e.method} {e.score:.3f})" for e in embeddings if e.drifted]
    sig = (["new_types"] if new else []) + (["type_shares"] if distance >= TYPE_SHARE_THRESHOLD else []) + \
        (fired if share_hit else []) + [f"embedding[{e.scope}]" for e in embeddings if e.drifted]
    dropped = bool(quality and quality["dropped"])
    reason = "; ".join(why) or f"no drift ({len(fired)} of {len(columns)} column tests)"
    if quality is not None:
        recorded = "unknown" if quality["recorded_f1"] is None else f"{quality['recorded_f1']:.3f}"
        reason += (f"; production F1 {quality['f1']:.3f} on {quality['sentences']} of its sentences "
                   f"(recorded {recorded}: {'dropped' if dropped else 'held'})")
    result = NerDrift(bool(why), sig + (["quality"] if dropped else []), reason,
                      new, shares, distance, columns, embeddings, notes,
                      sampled=len(cur) < len(current) or len(ref) < len(reference),
                      quality_dropped=dropped, quality=quality, embedded_reference=embedded_reference)
    return _write(result, out_dir, snapshot)


def _write(result: NerDrift, out_dir: Path | None, snapshot) -> NerDrift:
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        result = replace(result, json_path=str(out_dir / "drift.json"))
        (out_dir / "drift.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
        if snapshot is not None:
            snapshot.save_html(str(out_dir / "drift.html"))
    return result
