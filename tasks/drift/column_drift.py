"""Column drift: Evidently's tests on the per-row signals of the drift stage.

tasks/drift/detect.py turns a batch into one row of signals per text (the label, the text,
numeric descriptors, tokenizer coverage); this module runs Evidently's DataDriftPreset
on them, reference against current, and reads each column's verdict back into a
`ColumnDrift`. The `text` column's vocabulary test raises on a tiny vocabulary ("no
terms remain"); the report is then run without it and a note says why.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

LABEL = "label"
TEXT = "text"
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
# The raw text: Evidently's domain classifier on TF-IDF, judged by its ROC AUC. The
# "perc_" variant scores 1000 random classifiers per call (about 45 s per column on a
# busy 2-core box); the absolute one with the same effect-size bar as the embeddings
# (0.7: same-domain batches score 0.55-0.6, a new domain well above 0.9) costs ~0.1 s.
TEXT_METHOD = "abs_text_content_drift"
TEXT_THRESHOLD = 0.7


@dataclass(frozen=True)
class ColumnDrift:
    """One column's test, as Evidently ran it."""

    column: str
    method: str  # stat test name as Evidently reports it: "ks", "jensenshannon", ...
    score: float  # p-value or distance, as reported
    threshold: float
    drifted: bool  # Evidently's own verdict (p-value below, or distance at/above, threshold)


def column_drifts(cur: pd.DataFrame, ref: pd.DataFrame, *, drift_share: float, notes: list[str]):
    """Evidently's snapshot (object and JSON) and one ColumnDrift per column tested."""
    snapshot = _run_evidently(cur, ref, drift_share, notes)
    evidently = json.loads(snapshot.json())
    return snapshot, evidently, _columns_from_snapshot(evidently, list(ref.columns))


def _run_evidently(cur: pd.DataFrame, ref: pd.DataFrame, drift_share: float, notes: list[str]):
    """Evidently's column tests; without the `text` test when its TF-IDF cannot be built
    (a tiny vocabulary: "no terms remain"; a one-row batch: "max_df ... < min_df").
    Any other ValueError comes back from the second run, which has no text column."""
    try:
        return _evidently_report(cur, ref, drift_share, with_text=True)
    except ValueError as exc:
        notes.append(f"text: vocabulary drift not computed (Evidently: {exc})")
        return _evidently_report(cur.drop(columns=TEXT), ref.drop(columns=TEXT), drift_share, with_text=False)


def _evidently_report(cur: pd.DataFrame, ref: pd.DataFrame, drift_share: float, *, with_text: bool):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset
    from sklearn.exceptions import ConvergenceWarning

    numeric = [c for c in cur.columns if c not in (LABEL, TEXT)]
    definition = DataDefinition(categorical_columns=[LABEL], numerical_columns=numeric,
                                text_columns=[TEXT] if with_text else [])
    # include_tests: each ValueDrift then carries Evidently's drifted/not verdict, which
    # is the only place the direction of the threshold (p-value vs distance) is decided
    preset = DataDriftPreset(columns=list(cur.columns), drift_share=drift_share, cat_method=CAT_METHOD,
                             num_method=NUM_METHOD, text_method=TEXT_METHOD,
                             text_threshold=TEXT_THRESHOLD)
    report = Report([preset], include_tests=True)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # a constant signal (no digits in any text) or a one-row batch makes Evidently's
        # plots divide by a zero spread; the scores are unaffected, the warnings are noise
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)  # the text test's quick SGD fit
        return report.run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )


def _columns_from_snapshot(evidently: dict[str, Any], wanted: list[str]) -> list[ColumnDrift]:
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
        if not config.get("type", "").endswith(":ValueDrift") or config.get("column") not in wanted:
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
    missing = [s for s in wanted if s != TEXT and s not in found]  # text may have been left out
    if missing:
        raise RuntimeError(f"drift: Evidently reported no drift for {', '.join(missing)}")
    return [found[s] for s in wanted if s in found]
