"""Drift: the third stop of a batch, between validate and the retrain policy.

The new batch is compared with the reference, i.e. the training data behind the current
production model. Ratchet computes a few cheap, offline signals per row (`text_length`,
`word_count`, `non_letter_share`) and Evidently tests each of them and the `label`
column for a change of distribution. The verdict is a `DriftResult`; the evidence is
`drift.html` (Evidently's self-contained report) and `drift.json` (the verdict plus
Evidently's own metrics and tests) in the run's report folder.

No reference (the first batch) means everything is new: drifted, nothing is compared.

Cost: importing Evidently takes about 3 s once per process (it is imported lazily, so
`import tasks.drift` stays cheap); one call then takes about 0.3-1 s on CPU for a few
hundred current rows against up to 5000 reference rows, and drift.html is about 4 MB.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import DriftConfig

LABEL = "label"
NUMERIC_SIGNALS = ("text_length", "word_count", "non_letter_share")
SIGNALS = (LABEL, *NUMERIC_SIGNALS)
NO_REFERENCE = "no reference (first batch): everything is new"
_SHOWN_LABELS = 5
# Fixed tests instead of Evidently's size-dependent defaults. The defaults switch at
# 1000 reference rows: below it the label gets a chi-square goodness-of-fit test that
# takes the reference counts as exact (half of same-distribution 200-row batches
# "drifted" on label in our check); above it numbers get Wasserstein distance with a
# 0.1 threshold, which 200-row batches cross by sampling noise alone (3 in 20 batches
# drifted overall). Jensen-Shannon (distance, 0.1) for the label and two-sample K-S
# (p-value, 0.05) for the numbers gave 0-1 in 20 false alarms at every size we tried,
# with the same power, and the method names in drift.json no longer change with size.
CAT_METHOD = "jensenshannon"
NUM_METHOD = "ks"


@dataclass(frozen=True)
class ColumnDrift:
    """One signal's test, as Evidently ran it."""

    column: str
    method: str  # stat test name as Evidently reports it: "ks", "jensenshannon"
    score: float  # p-value or distance, as reported
    threshold: float
    drifted: bool  # Evidently's own verdict (p-value below, or distance at/above, threshold)


@dataclass(frozen=True)
class DriftResult:
    """The drift stage's verdict; `to_dict()` is what drift.json holds besides Evidently's."""

    drifted: bool  # share of drifted signals >= drift_share, or no reference
    reason: str
    columns: list[ColumnDrift]
    new_labels: list[str]  # labels in current absent from the (whole) reference, sorted
    reference_rows: int  # rows compared, after sampling down to max_reference_rows
    current_rows: int
    html_path: str | None
    json_path: str | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for col in data["columns"]:
            # NaN/inf are not JSON; a degenerate test reads as "no score"
            col["score"] = col["score"] if math.isfinite(col["score"]) else None
        return data


def text_signals(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-row signals Evidently compares: label plus numeric text descriptors."""
    missing = [c for c in ("text", LABEL) if c not in frame.columns]
    if missing:
        raise ValueError(f"drift: batch lacks column(s) {', '.join(missing)}")
    text = frame["text"].fillna("").astype(str)
    length = text.str.len()
    # anything that is neither a letter nor whitespace: digits, punctuation, symbols
    non_letter = text.str.count(r"[^\w\s]|[\d_]")
    return pd.DataFrame(
        {
            LABEL: frame[LABEL].fillna("").astype(str).to_numpy(),
            "text_length": length.to_numpy(dtype=float),
            "word_count": text.str.split().str.len().to_numpy(dtype=float),
            "non_letter_share": (non_letter / length.clip(lower=1)).to_numpy(dtype=float),
        }
    )


def sample_reference(reference: pd.DataFrame, cfg: DriftConfig, seed: int) -> pd.DataFrame:
    """Cap the reference at cfg.max_reference_rows (0 means no cap), reproducibly."""
    cap = cfg.max_reference_rows
    if cap <= 0 or len(reference) <= cap:
        return reference
    return reference.sample(n=cap, random_state=seed)


def detect_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame | None,
    cfg: DriftConfig,
    out_dir: Path,
    seed: int = 0,
) -> DriftResult:
    """Compare `current` with `reference`; write drift.html and drift.json to out_dir."""
    if len(current) == 0:
        raise ValueError("drift: the current batch has no rows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / "drift.html", out_dir / "drift.json"
    cur = text_signals(current)
    if reference is None or len(reference) == 0:
        return _first_batch(cur, html_path, json_path)
    ref = text_signals(sample_reference(reference, cfg, seed))
    # new labels against the whole reference: sampling could hide a rare old label
    new_labels = sorted(set(cur[LABEL]) - set(reference[LABEL].fillna("").astype(str)))
    snapshot = _run_evidently(cur, ref, cfg)
    snapshot.save_html(str(html_path))  # Evidently writes nothing when given a Path
    evidently = json.loads(snapshot.json())
    columns = _columns_from_snapshot(evidently)
    drifted_names = [c.column for c in columns if c.drifted]
    result = DriftResult(
        drifted=len(drifted_names) / len(columns) >= cfg.drift_share,
        reason=_reason(drifted_names, len(columns), new_labels),
        columns=columns,
        new_labels=new_labels,
        reference_rows=len(ref),
        current_rows=len(cur),
        html_path=str(html_path),
        json_path=str(json_path),
    )
    _write_json(json_path, result, evidently=evidently)
    return result


def _first_batch(cur: pd.DataFrame, html_path: Path, json_path: Path) -> DriftResult:
    """No reference: nothing to compare, every label is new, retraining is warranted."""
    result = DriftResult(
        drifted=True,
        reason=NO_REFERENCE,
        columns=[],
        new_labels=sorted(set(cur[LABEL])),
        reference_rows=0,
        current_rows=len(cur),
        html_path=str(html_path),
        json_path=str(json_path),
    )
    html_path.write_text(_no_reference_html(result), encoding="utf-8")
    _write_json(json_path, result, evidently=None)
    return result


def _run_evidently(cur: pd.DataFrame, ref: pd.DataFrame, cfg: DriftConfig):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(categorical_columns=[LABEL], numerical_columns=list(NUMERIC_SIGNALS))
    # include_tests: each ValueDrift then carries Evidently's drifted/not verdict, which
    # is the only place the direction of the threshold (p-value vs distance) is decided
    preset = DataDriftPreset(
        columns=list(SIGNALS), drift_share=cfg.drift_share, cat_method=CAT_METHOD, num_method=NUM_METHOD
    )
    report = Report([preset], include_tests=True)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # a constant signal (no digits in any text) or a one-row batch makes Evidently's
        # plots divide by a zero spread; the scores are unaffected, the warnings are noise
        warnings.simplefilter("ignore", RuntimeWarning)
        return report.run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )


def _columns_from_snapshot(evidently: dict[str, Any]) -> list[ColumnDrift]:
    """Read the ValueDrift metrics and their tests out of Evidently's snapshot JSON, by
    metric type, metric id and column name (never by position)."""
    verdicts = {
        test["metric_config"]["metric_id"]: test["status"]
        for test in evidently.get("tests", [])
        if test.get("metric_config", {}).get("params", {}).get("type", "").endswith(":ValueDrift")
    }
    found: dict[str, ColumnDrift] = {}
    for metric in evidently.get("metrics", []):
        config = metric.get("config", {})
        if not config.get("type", "").endswith(":ValueDrift") or config.get("column") not in SIGNALS:
            continue
        status = verdicts.get(metric["id"])
        if status not in ("FAIL", "SUCCESS"):
            raise RuntimeError(f"drift: Evidently gave no drift verdict for {config['column']!r} ({status})")
        found[config["column"]] = ColumnDrift(
            column=config["column"],
            method=str(config["method"]),
            score=float(metric["value"]),
            threshold=float(config["threshold"]),
            drifted=status == "FAIL",
        )
    missing = [s for s in SIGNALS if s not in found]
    if missing:
        raise RuntimeError(f"drift: Evidently reported no drift for {', '.join(missing)}")
    return [found[s] for s in SIGNALS]


def _reason(drifted: list[str], total: int, new_labels: list[str]) -> str:
    reason = f"{len(drifted)} of {total} signals drifted"
    if drifted:
        reason += ": " + ", ".join(drifted)
    if new_labels:
        shown = ", ".join(new_labels[:_SHOWN_LABELS])
        more = f" and {len(new_labels) - _SHOWN_LABELS} more" if len(new_labels) > _SHOWN_LABELS else ""
        reason += f"; {len(new_labels)} new label(s): {shown}{more}"
    return reason


def _write_json(path: Path, result: DriftResult, evidently: dict[str, Any] | None) -> None:
    payload = {**result.to_dict(), "evidently": evidently}
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def _no_reference_html(result: DriftResult) -> str:
    labels = html.escape(", ".join(result.new_labels)) or "none"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Ratchet drift</title>"
        f"</head><body><h1>Drift</h1><p>{html.escape(result.reason)}.</p>"
        f"<p>{result.current_rows} rows; labels: {labels}</p></body></html>\n"
    )


# --- Prefect edge -------------------------------------------------------------------
from prefect import task  # noqa: E402


@task(name="drift")
def drift_task(
    current: pd.DataFrame,
    reference: pd.DataFrame | None,
    cfg: DriftConfig,
    out_dir: Path,
    seed: int = 0,
) -> DriftResult:
    return detect_drift(current, reference, cfg, out_dir, seed)


def main() -> None:
    """dvc stage `drift`: the audited batch against its parent's training data."""
    from tasks import pipeline
    from tasks.intake import load_train

    p = pipeline.params()
    parts = pipeline.split_frames()
    ws = pipeline.workspace()
    reference = load_train(pipeline.lineage(p), ws)
    current = pd.concat([parts["train"], parts["test"]], ignore_index=True)
    detect_drift(current, reference, p.drift, pipeline.stage_dir("drift"), p.train.seed)


if __name__ == "__main__":
    main()
