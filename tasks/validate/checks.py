"""Validate: the gate of the batch path, between intake and drift.

A parsed batch is checked against the batch contract. A Great Expectations 1.x suite
built from `ValidateConfig` (params.yaml) runs in a throwaway in-memory context: `text`
and `label` exist, are non-null, non-blank strings, text lengths lie within bounds,
`id` (when present) is unique, and the batch has at least `min_rows` rows. What GX has
no expectation for (unreadable rows, control characters, token length, duplicates,
conflicting labels, the label vocabulary and distribution) comes from tasks/validate/contract.py
and leakage against the exam from tasks/validate/leakage.py, in the same shape. A file intake
could not parse fails here too, as `file_parses`.

The verdict is `accepted`, `accepted_with_warnings` or `rejected`. Under
`on_bad_rows: drop_rows` bad rows are dropped (and listed as warnings) instead of
rejecting the batch; problems with the batch as a whole always reject it. GX's result
objects never leave this module: each failed check becomes a `Failure` with a count and
up to five example row numbers, 1-based rows of the delivered file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from tasks.core.config import LabelsConfig, ValidateConfig
from tasks.validate.contract import Check, Context, batch_checks, row_checks, usable_rows
from tasks.validate.gx_suite import REQUIRED, gx_checks
from tasks.validate.leakage import KINDS, find_leakage

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Failure:
    """One failed check: which, on which column, how many rows, and a few of them
    (1-based row numbers of the delivered file)."""

    expectation: str
    column: str | None
    count: int
    examples: list[int]
    message: str


@dataclass(frozen=True)
class ValidationResult:
    passed: bool
    rows: int
    failures: list[Failure]
    warnings: list[Failure] = field(default_factory=list)
    verdict: str = "accepted"  # accepted | accepted_with_warnings | rejected
    # rows that do not go on, by 0-based position: bad rows dropped under drop_rows
    # (with their reasons) and leaking rows (by kind)
    dropped: dict[int, list[str]] = field(default_factory=dict)
    leakage: dict[str, list[int]] = field(default_factory=dict)
    file_rows: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        leaks = {kind: len(self.leakage.get(kind, [])) for kind in KINDS}
        gone = set(self.dropped) | {p for rows in self.leakage.values() for p in rows}
        return {"rows": self.rows, "dropped_bad_rows": len(self.dropped), "leakage": leaks,
                "kept_rows": 0 if not self.passed else self.rows - len(gone)}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "verdict": self.verdict, "rows": self.rows,
                "failures": [asdict(f) for f in self.failures],
                "warnings": [asdict(f) for f in self.warnings], "counts": self.counts()}

    def summary(self) -> str:
        """One line per failure and warning, for the CLI; a single line when all is clean."""
        if self.passed and not self.warnings:
            return f"validation passed ({self.rows} rows)"
        lines = []
        for mark, items in (("FAIL", self.failures), ("WARN", self.warnings)):
            for f in items:
                rows = f" (rows {', '.join(map(str, f.examples))})" if f.examples else ""
                lines.append(f"{mark} {f.expectation}: {f.message}{rows}")
        return "\n".join(lines)

    def kept(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of `frame` that go on: bad rows (drop_rows) and leaking rows removed."""
        gone = set(self.dropped) | {p for rows in self.leakage.values() for p in rows}
        df = frame.reset_index(drop=True)
        return df.drop(index=sorted(gone)).reset_index(drop=True) if gone else df


def too_large(message: str) -> ValidationResult:
    """The verdict on a file refused from its size (intake.max_bytes) before it was read."""
    failure = Failure("file_size_at_most", None, 1, [], message)
    return ValidationResult(passed=False, rows=0, failures=[failure], verdict="rejected")


def validate_frame(
    frame: pd.DataFrame | None, cfg: ValidateConfig, parse_error: str | None = None, *,
    labels: LabelsConfig | None = None, context: Context | None = None,
    rows: list[int] | None = None, malformed: dict[int, str] | None = None,
) -> ValidationResult:
    """Check a parsed batch against the contract built from `cfg` and `labels`.

    `context` brings production's labels, tokenizer and the exam (none: a first batch
    with nothing to compare); `rows` the file row number of each row of `frame` (default
    1, 2, ...); `malformed` the rows the parser could not read."""
    if parse_error is not None:
        failure = Failure("file_parses", None, 1, [], parse_error)
        return ValidationResult(passed=False, rows=0, failures=[failure], verdict="rejected")
    if frame is None:
        raise ValueError("validate_frame needs a frame or a parse_error")
    labels, context, malformed = labels or LabelsConfig(), context or Context(), malformed or {}
    # Row numbers in examples are file rows, whatever index the caller's frame has.
    df = frame.reset_index(drop=True)
    for col in REQUIRED:
        if col in df.columns:
            # On a numeric dtype GX's type check only compares the dtype and names no
            # rows; as object it checks value by value (and int labels fail per row).
            df[col] = df[col].astype(object)
    checks = gx_checks(df, cfg)
    leak = None
    if all(col in df.columns for col in REQUIRED):
        ok = usable_rows(df, malformed)
        checks += row_checks(df, ok, cfg, labels, context, malformed)
        bad = {p for c in checks if c.level == "row" and c.severity == "fail" for p in c.positions}
        good = df[ok & ~df.index.isin(list(bad))]
        dropping = cfg.on_bad_rows == "drop_rows"
        checks += batch_checks(good, len(bad) if dropping else 0, cfg, labels, context)
        leak = find_leakage(good, context)
        checks += leak.checks()
    elif malformed:
        checks += row_checks(df.assign(text=None, label=None), pd.Series(False, index=df.index),
                             cfg, labels, context, malformed)[:1]
    return _result(df, checks, leak.found if leak else {}, cfg, rows or list(range(1, len(df) + 1)))


def _result(df: pd.DataFrame, checks: list[Check], leakage: dict[str, list[int]], cfg: ValidateConfig,
            rows: list[int]) -> ValidationResult:
    """Sort checks into failures and warnings; under drop_rows row-level failures become
    warnings and their rows are dropped."""
    dropping = cfg.on_bad_rows == "drop_rows"
    failures, warnings, dropped = [], [], {}
    for check in checks:
        failure = _failure(check, rows)
        if check.severity == "warn":
            warnings.append(failure)
        elif check.level == "row" and dropping:
            warnings.append(Failure(failure.expectation, failure.column, failure.count, failure.examples,
                                    failure.message + " -> dropped (on_bad_rows: drop_rows)"))
            for p in check.positions:
                dropped.setdefault(p, []).append(f"{check.expectation}: {check.message}")
        else:
            failures.append(failure)
    verdict = "rejected" if failures else "accepted_with_warnings" if warnings else "accepted"
    return ValidationResult(passed=not failures, rows=len(df), failures=failures, warnings=warnings,
                            verdict=verdict, dropped=dropped if not failures else {},
                            leakage=leakage if not failures else {}, file_rows=list(rows))


def _failure(check: Check, rows: list[int]) -> Failure:
    examples = [int(rows[p]) for p in sorted(check.positions)[:MAX_EXAMPLES]]
    return Failure(check.expectation, check.column, check.count, examples, check.message)


