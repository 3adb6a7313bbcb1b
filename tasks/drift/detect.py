"""Drift: the third stop of a batch, between validate and the retrain policy.

The new batch is compared with the reference, i.e. the training data behind the current
production model (plus batches accepted but not yet trained on, see tasks/drift/policy.py).
Evidently tests, column by column: the `label` distribution, cheap offline text
descriptors (`text_length`, `word_count`, `non_letter_share`), Ratchet's tokenizer
coverage under the production tokenizer (`unk_share`, `pieces_per_word`) and the raw
`text` itself (Evidently's vocabulary drift; it raises on a tiny vocabulary, which is
caught and reported). tasks/drift/embed_drift.py adds what the production model sees:
embedding drift (whole batch and per slice) and its own accuracy on the new rows.

The verdict is a `DriftResult`: `drifted` (the data moved: new labels, drifted
embeddings, or at least `drift_share` of the column tests), `quality_dropped` (the
champion got worse on it) and the `signals` that fired; the evidence is `drift.html`
(Evidently's self-contained report with Ratchet's summary on top) and `drift.json`.
Big batches are sampled to the bounds in params.yaml and the result says so.

No reference (the first batch) means everything is new: drifted, nothing is compared.
Evidently is imported lazily (about 3 s once per process).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.config import DriftConfig
from tasks.drift.column_drift import TEXT, ColumnDrift, column_drifts
from tasks.drift.drift_report import first_batch_html, with_summary
from tasks.drift.embed_drift import (Champion, EmbeddingDrift, Quality, champion_quality, coverage,
                                     embedding_drifts, encode, pooled, text_keys)
from tasks.drift.reference import Reference, reference_embeddings, store_reference
from tasks.train.model import open_classifier

LABEL = "label"
NUMERIC_SIGNALS = ("text_length", "word_count", "non_letter_share")
SIGNALS = (LABEL, *NUMERIC_SIGNALS)  # always tested; coverage and text join when possible
NO_REFERENCE = "no reference (first batch): everything is new"
_SHOWN = 5


@dataclass(frozen=True)
class DriftResult:
    """The drift stage's verdict; `to_dict()` is what drift.json holds besides Evidently's."""

    drifted: bool  # the data moved: new labels, embeddings, or >= drift_share of columns
    quality_dropped: bool  # the champion's accuracy on the batch fell beyond max_quality_drop
    signals: list[str]  # what fired: column names, "new_labels", "embedding[...]", "quality"
    reason: str
    columns: list[ColumnDrift]
    new_labels: list[str]  # labels in current absent from the (whole) reference, sorted
    reference_rows: int  # rows compared, after sampling down to max_reference_rows
    current_rows: int  # rows compared, after sampling down to max_current_rows
    html_path: str | None
    json_path: str | None
    embeddings: list[EmbeddingDrift] = field(default_factory=list)
    quality: Quality | None = None
    champion: str | None = None  # the model whose tokenizer, embeddings and answers were used
    sampling: dict[str, dict] = field(default_factory=dict)  # side -> {rows, used, sampled}
    notes: list[str] = field(default_factory=list)  # tests that could not run, and why

    @property
    def sampled(self) -> bool:
        return any(s["sampled"] for s in self.sampling.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for col in data["columns"]:
            # NaN/inf are not JSON; a degenerate test reads as "no score"
            col["score"] = col["score"] if math.isfinite(col["score"]) else None
        return {**data, "sampled": self.sampled}

    def headline(self) -> dict[str, Any]:
        """The few facts the CLI prints and the decision JSON keeps."""
        scores = {c.column: c.score if math.isfinite(c.score) else None for c in self.columns}
        scores.update({f"embedding[{e.scope}]": e.score for e in self.embeddings})
        if self.quality is not None:
            scores["champion_accuracy"] = self.quality.accuracy
        return {"drifted": self.drifted, "quality_dropped": self.quality_dropped, "signals": self.signals,
                "reason": self.reason, "new_labels": self.new_labels, "scores": scores,
                "sampled": self.sampled, "html_path": self.html_path, "json_path": self.json_path}


def text_signals(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-row signals Evidently compares: label, text, numeric text descriptors."""
    missing = [c for c in (TEXT, LABEL) if c not in frame.columns]
    if missing:
        raise ValueError(f"drift: batch lacks column(s) {', '.join(missing)}")
    text = frame[TEXT].fillna("").astype(str)
    length = text.str.len()
    # anything that is neither a letter nor whitespace: digits, punctuation, symbols
    non_letter = text.str.count(r"[^\w\s]|[\d_]")
    return pd.DataFrame(
        {
            LABEL: frame[LABEL].fillna("").astype(str).to_numpy(),
            TEXT: text.to_numpy(),
            "text_length": length.to_numpy(dtype=float),
            "word_count": text.str.split().str.len().to_numpy(dtype=float),
            "non_letter_share": (non_letter / length.clip(lower=1)).to_numpy(dtype=float),
        }
    )


def sample_rows(frame: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    """At most `cap` rows (0 means no cap), reproducibly."""
    if cap <= 0 or len(frame) <= cap:
        return frame.reset_index(drop=True)
    return frame.sample(n=cap, random_state=seed).reset_index(drop=True)


def sample_reference(reference: pd.DataFrame, cfg: DriftConfig, seed: int) -> pd.DataFrame:
    """Cap the reference at cfg.max_reference_rows (0 means no cap), reproducibly."""
    return sample_rows(reference, cfg.max_reference_rows, seed)


def detect_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame | None,
    cfg: DriftConfig,
    out_dir: Path,
    seed: int = 0,
    champion: Champion | None = None,
    heldout: pd.DataFrame | None = None,
) -> DriftResult:
    """Compare `current` with `reference`; write drift.html and drift.json to out_dir.
    With a `champion`, also tokenizer coverage, embedding drift and its quality; the
    embeddings' reference side is drawn from `heldout` (the held-out rows behind
    production) when given, else from `reference`."""
    if len(current) == 0:
        raise ValueError("drift: the current batch has no rows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html_path": str(out_dir / "drift.html"), "json_path": str(out_dir / "drift.json")}
    if reference is None or len(reference) == 0:
        return _first_batch(current, champion, paths)
    cur, ref = sample_rows(current, cfg.max_current_rows, seed), sample_reference(reference, cfg, seed)
    sampling = {"current": _sampling(current, cur), "reference": _sampling(reference, ref)}
    # new labels against the whole reference: sampling could hide a rare old label
    new_labels = sorted(set(current[LABEL].fillna("").astype(str)) - set(reference[LABEL].fillna("").astype(str)))
    cur_sig, ref_sig = text_signals(cur), text_signals(ref)
    if champion is not None:
        cur_sig = cur_sig.join(coverage(champion.clf, list(cur_sig[TEXT])))
        ref_sig = ref_sig.join(coverage(champion.clf, list(ref_sig[TEXT])))
    notes: list[str] = []
    snapshot, evidently, columns = column_drifts(cur_sig, ref_sig, drift_share=cfg.drift_share, notes=notes)
    embeddings, quality = [], None
    if champion is not None:
        base = heldout if heldout is not None and len(heldout) else ref
        embeddings, quality, used = _model_signals(cur, base, champion, cfg, seed, len(current))
        sampling.update(used)
    result = _verdict(columns, embeddings, quality, new_labels, cfg, champion, sampling, notes, paths,
                      rows=(len(ref), len(cur)))
    snapshot.save_html(paths["html_path"])  # Evidently writes nothing when given a Path
    with_summary(Path(paths["html_path"]), result)
    _write_json(Path(paths["json_path"]), result, evidently=evidently)
    return result


def _sampling(whole: pd.DataFrame, used: pd.DataFrame) -> dict:
    return {"rows": len(whole), "used": len(used), "sampled": len(used) < len(whole)}


def _model_signals(cur: pd.DataFrame, base: pd.DataFrame, champion: Champion, cfg: DriftConfig, seed: int,
                   rows_total: int) -> tuple[list[EmbeddingDrift], Quality | None, dict]:
    """One forward pass over at most max_embed_rows of the batch (embeddings and
    answers); the reference sample of `base` from production's stored vectors."""
    cur_e = sample_rows(cur, cfg.max_embed_rows, seed)
    kw = {"batch_size": 64, "max_length": champion.max_length}
    ref = reference_rows(base, champion, cfg, seed)
    cur_emb, pred = encode(champion.clf, list(cur_e[TEXT].astype(str)), **kw)
    embeddings = embedding_drifts(ref.vectors, _slices(ref.rows), cur_emb, _slices(cur_e),
                                  method=cfg.embedding_method, threshold=cfg.embedding_threshold,
                                  min_rows=cfg.min_slice_rows)
    quality = champion_quality(champion, cur_e[LABEL], pred, rows_total=rows_total, max_drop=cfg.max_quality_drop)
    used = {"embedded_current": {"rows": rows_total, "used": len(cur_e), "sampled": len(cur_e) < rows_total},
            "embedded_reference": ref.sampling(len(base))}
    return embeddings, quality, used


def reference_rows(base: pd.DataFrame, champion: Champion, cfg: DriftConfig, seed: int) -> Reference:
    """The embedding reference: a consistent sample of `base` with `champion`'s vectors,
    those it stored at promotion where present (tasks/drift/reference.py)."""
    return reference_embeddings(base, _keys(base, champion.max_length), cap=cfg.max_embed_rows, seed=seed,
                                model_dir=champion.path, embed=_embedder(champion.clf, champion.max_length))


def store_drift_reference(model_dir: Path, heldout: pd.DataFrame, cfg: DriftConfig, seed: int,
                          max_length: int) -> Path | None:
    """At promotion: the candidate's vectors of the reference sample of its lineage's
    held-out rows, stored in its directory for the drift runs judged against it."""
    return store_reference(model_dir, heldout, _keys(heldout, max_length), cap=cfg.max_embed_rows, seed=seed,
                           embed=_embedder(open_classifier(model_dir), max_length))


def _keys(frame: pd.DataFrame, max_length: int) -> list[str]:
    return text_keys(list(frame[TEXT].astype(str)), max_length)


def _embedder(clf, max_length: int):
    return lambda f: pooled(clf, list(f[TEXT].astype(str)), batch_size=64, max_length=max_length)


def _slices(frame: pd.DataFrame) -> pd.Series:
    return frame["slice"].astype(str) if "slice" in frame.columns else pd.Series(["all"] * len(frame))


def _verdict(columns, embeddings, quality, new_labels, cfg, champion, sampling, notes, paths, rows) -> DriftResult:
    fired = [c.column for c in columns if c.drifted]
    share = len(fired) / len(columns) if columns else 0.0
    emb_fired = [f"embedding[{e.scope}]" for e in embeddings if e.drifted]
    dropped = bool(quality and quality.dropped)
    signals = fired + (["new_labels"] if new_labels else []) + emb_fired + (["quality"] if dropped else [])
    notes = notes + [f"embedding[{e.scope}]: {e.note}" for e in embeddings if e.note]
    return DriftResult(
        drifted=bool(new_labels or emb_fired or share >= cfg.drift_share), quality_dropped=dropped,
        signals=signals, reason=_reason(fired, len(columns), new_labels, emb_fired, quality),
        columns=columns, new_labels=new_labels, reference_rows=rows[0], current_rows=rows[1],
        embeddings=embeddings, quality=quality, champion=champion.name if champion else None,
        sampling=sampling, notes=notes, **paths)


def _first_batch(current: pd.DataFrame, champion: Champion | None, paths: dict) -> DriftResult:
    """No reference: nothing to compare, every label is new, retraining is warranted."""
    result = DriftResult(
        drifted=True, quality_dropped=False, signals=["no_reference"], reason=NO_REFERENCE, columns=[],
        new_labels=sorted(set(current[LABEL].fillna("").astype(str))), reference_rows=0,
        current_rows=len(current), champion=champion.name if champion else None, **paths)
    Path(paths["html_path"]).write_text(first_batch_html(result), encoding="utf-8")
    _write_json(Path(paths["json_path"]), result, evidently=None)
    return result


def _reason(fired: list[str], total: int, new_labels: list[str], emb_fired: list[str], quality) -> str:
    reason = f"{len(fired)} of {total} column tests drifted"
    if fired:
        reason += ": " + ", ".join(fired)
    if new_labels:
        shown = ", ".join(new_labels[:_SHOWN])
        more = f" and {len(new_labels) - _SHOWN} more" if len(new_labels) > _SHOWN else ""
        reason += f"; {len(new_labels)} new label(s): {shown}{more}"
    if emb_fired:
        reason += "; embeddings drifted: " + ", ".join(emb_fired)
    if quality is not None and quality.accuracy is not None:
        recorded = "unknown" if quality.recorded_accuracy is None else f"{quality.recorded_accuracy:.3f}"
        verdict = "dropped" if quality.dropped else "held"
        reason += (f"; champion accuracy {quality.accuracy:.3f} on {quality.rows_scored} known-label rows "
                   f"vs {recorded} held out ({verdict})")
    return reason


def _write_json(path: Path, result: DriftResult, evidently: dict[str, Any] | None) -> None:
    payload = {**result.to_dict(), "evidently": evidently}
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


