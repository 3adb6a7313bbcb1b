"""Drift report pages: Ratchet's summary on top of Evidently's self-contained HTML.

Evidently's page covers the column tests; the embedding tests, the champion's quality
and the sampling are Ratchet's, so a short summary table is written into the same
file (right after <body>) to keep one self-contained drift.html per run.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table border=\"1\" cellpadding=\"4\" style=\"border-collapse:collapse\"><tr>{head}</tr>{body}</table>"


def summary_html(result) -> str:
    """The verdict, the signals, embedding and quality tests, sampling and notes."""
    verdict = "DRIFTED" if result.drifted else "no drift"
    parts = [
        f"<h1>Ratchet drift: {verdict}{' / champion quality dropped' if result.quality_dropped else ''}</h1>",
        f"<p>{html.escape(result.reason)}</p>",
        f"<p>signals: {html.escape(', '.join(result.signals) or 'none')}; model: {_fmt(result.champion)}</p>",
    ]
    if result.columns:
        parts.append("<h2>Column tests (Evidently)</h2>" + _table(
            ["column", "method", "score", "threshold", "drifted"],
            [[c.column, c.method, c.score, c.threshold, c.drifted] for c in result.columns]))
    if result.embeddings:
        parts.append("<h2>Embedding drift (production model, Evidently method)</h2>" + _table(
            ["scope", "method", "score", "threshold", "drifted", "reference rows", "current rows", "note"],
            [[e.scope, e.method, e.score, e.threshold, e.drifted, e.reference_rows, e.current_rows, e.note]
             for e in result.embeddings]))
    q = result.quality
    if q is not None:
        parts.append("<h2>Champion on the new batch</h2>" + _table(
            ["rows scored", "rows sampled", "accuracy", "macro-F1", "recorded accuracy", "drop", "max drop",
             "dropped"],
            [[q.rows_scored, q.rows_sampled, q.accuracy, q.macro_f1, q.recorded_accuracy, q.drop, q.max_drop,
              q.dropped]]))
    if result.sampling:
        parts.append("<h2>Sampling</h2>" + _table(
            ["side", "rows", "used", "sampled"],
            [[side, s["rows"], s["used"], s["sampled"]] for side, s in result.sampling.items()]))
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) + "</ul>")
    return "<section id=\"ratchet-summary\" style=\"font-family:sans-serif;margin:1em\">" + "".join(parts) + "</section>"


def with_summary(path: Path, result) -> None:
    """Insert the summary right after Evidently's <body> tag (or at the top)."""
    page = path.read_text(encoding="utf-8")
    match = re.search(r"<body[^>]*>", page)
    at = match.end() if match else 0
    path.write_text(page[:at] + summary_html(result) + page[at:], encoding="utf-8")


def first_batch_html(result) -> str:
    labels = html.escape(", ".join(result.new_labels)) or "none"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Ratchet drift</title>"
        f"</head><body><h1>Drift</h1><p>{html.escape(result.reason)}.</p>"
        f"<p>{result.current_rows} rows; labels: {labels}</p></body></html>\n"
    )
