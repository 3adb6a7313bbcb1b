"""Quarantine: what a rejected batch, or the bad rows of an accepted one, leave behind.

data/quarantine/<batch-id>/ (the id is a content hash; no user string ever names a file)
  raw/<file>        the delivered bytes, untouched (rejected batches)
  validation.json   the ValidationResult: verdict, failures, warnings, counts
  report.json       batch id, source and validation, as the flow recorded it
  report.html       the same for people: offline, no scripts, every value escaped
  dropped_rows.jsonl  one JSON object per dropped row: file row, reasons, the record
                      (on_bad_rows: drop_rows)

Delivered text is data, never markup: the report escapes everything and shows user
strings through `contract.show` (truncated, quoted, control characters visible), and
dropped rows are JSON, which a spreadsheet does not evaluate as formulas.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from tasks.validate.contract import show
from tasks.intake.batch import Intake, quarantine
from tasks.validate.checks import Failure, ValidationResult
from tasks.core.workspace import Workspace

PREVIEW_CHARS = 120
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
         ".rejected{color:#b00}.accepted_with_warnings{color:#a60}.accepted{color:#070}")


def quarantine_batch(got: Intake, result: ValidationResult, source: str, ws: Workspace) -> Path:
    """Move a rejected batch (raw bytes untouched) to data/quarantine/<id>/ with its reports."""
    report = {"batch_id": got.batch_id, "source": source, "validation": result.to_dict()}
    target = quarantine(got, report, ws)
    _write_reports(target, got, result, source)
    return target


def quarantine_rows(got: Intake, result: ValidationResult, source: str, ws: Workspace) -> Path:
    """Write the rows dropped under `on_bad_rows: drop_rows` with their reasons."""
    target = ws.quarantine_dir / got.batch_id
    target.mkdir(parents=True, exist_ok=True)
    frame = got.frame.reset_index(drop=True)
    with open(target / "dropped_rows.jsonl", "w", encoding="utf-8") as out:
        for position, reasons in sorted(result.dropped.items()):
            record = {str(k): _plain(v) for k, v in frame.iloc[position].items()}
            out.write(json.dumps({"row": result.file_rows[position], "reasons": reasons, "record": record},
                                 default=str) + "\n")
    _write_reports(target, got, result, source)
    return target


def _plain(value: object) -> object:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _write_reports(target: Path, got: Intake, result: ValidationResult, source: str) -> None:
    (target / "validation.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    (target / "report.html").write_text(render_html(result, got.batch_id, source, got.frame), encoding="utf-8")


def render_html(result: ValidationResult, batch_id: str, source: str, frame: pd.DataFrame | None) -> str:
    """A self-contained HTML page: verdict, counts, each failure and warning with the
    offending rows' text and label, all escaped."""
    e = html.escape
    counts = result.counts()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        # no scripts, no network: the page only ever shows what it contains
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>Ratchet validation {e(batch_id)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Batch {e(batch_id)}: <span class='{e(result.verdict)}'>{e(result.verdict)}</span></h1>",
        f"<p>Source: <code>{e(show(source, 200))}</code><br>Rows: {counts['rows']}, dropped as bad: "
        f"{counts['dropped_bad_rows']}, kept: {counts['kept_rows']}<br>Leakage: "
        + e(", ".join(f"{k} {v}" for k, v in counts["leakage"].items())) + "</p>",
        "<p>Row numbers are 1-based rows of the delivered file: for CSV and JSONL the line "
        "(the CSV header is line 1), for Parquet the row position.</p>",
    ]
    for title, items in (("Failures", result.failures), ("Warnings", result.warnings)):
        if items:
            parts.append(f"<h2>{title}</h2>" + _table(items, result, frame))
    if not result.failures and not result.warnings:
        parts.append("<p>No problems found.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(items: list[Failure], result: ValidationResult, frame: pd.DataFrame | None) -> str:
    e = html.escape
    rows = ["<table><tr><th>check</th><th>column</th><th>rows</th><th>message</th><th>examples</th></tr>"]
    for f in items:
        rows.append(f"<tr><td>{e(f.expectation)}</td><td>{e(str(f.column or ''))}</td><td>{f.count}</td>"
                    f"<td>{e(f.message)}</td><td>{_examples(f, result, frame)}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _examples(f: Failure, result: ValidationResult, frame: pd.DataFrame | None) -> str:
    """Each example row number with a preview of its text and label."""
    if frame is None or not f.examples:
        return html.escape(", ".join(map(str, f.examples)))
    where = {row: i for i, row in enumerate(result.file_rows)}
    df = frame.reset_index(drop=True)
    lines = []
    for row in f.examples:
        position = where.get(row)
        record = df.iloc[position] if position is not None and position < len(df) else {}
        shown = "; ".join(f"{col}={show(record.get(col), PREVIEW_CHARS)}" for col in ("text", "label")
                          if col in df.columns)
        lines.append(f"row {row}: {html.escape(shown)}")
    return "<br>".join(lines)
