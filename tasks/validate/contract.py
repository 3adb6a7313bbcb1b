"""Contract: the checks of the batch contract that Great Expectations has no expectation for.

tasks/validate/checks.py runs the GX suite; this module adds, in pandas, what needs knowledge
beyond one column: unreadable rows, control characters, token length under the
production tokenizer, duplicate rows, the same text with conflicting labels, the label
vocabulary against what production knows (new labels, near-duplicate label names), the
label share and the KL divergence of the label distribution from the data behind
production. Each check returns a `Check` in the same shape as a GX failure.

`Context` is what validation knows beyond the file (loaded by tasks/validate/context.py):
production's labels (the label map in the registry's production version) and tokenizer,
the training data behind it, the held-out exam and every accepted batch's training rows
(for leakage, tasks/validate/leakage.py).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from tasks.core.config import LabelsConfig, ValidateConfig

CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
SPECIAL_TOKENS = 4


@dataclass(frozen=True)
class Check:
    """One failed check with every offending row (0-based positions; none for a check
    on the batch as a whole). `level` row: the rows can be dropped; batch: they cannot."""

    expectation: str
    column: str | None
    positions: list[int]
    message: str
    level: str = "row"
    severity: str = "fail"  # fail | warn

    @property
    def count(self) -> int:
        return len(self.positions) or 1


@dataclass(frozen=True)
class Context:
    known_labels: frozenset[str] = frozenset()
    reference_labels: dict[str, int] = field(default_factory=dict)
    exam_texts: frozenset[str] = frozenset()
    past_train_texts: frozenset[str] = frozenset()
    test_share: float = 0.2
    count_tokens: Callable[[list[str]], list[int]] | None = None


def show(value: object, limit: int = 40) -> str:
    """A user string as it may appear in a message: truncated, quoted, control characters
    made visible (repr), so no message carries markup or terminal escapes verbatim."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def normalise(text: str) -> str:
    """Texts that differ only in case or spacing are the same text."""
    return " ".join(text.split()).casefold()


def normalise_all(texts: pd.Series) -> pd.Series:
    """`normalise` over a column of strings."""
    return texts.str.split().str.join(" ").str.casefold()


# Letters that render like a Latin one (Unicode's confusables for the Cyrillic and Greek
# letters met in practice; NFKC has already folded full-width and compatibility forms)
LOOK_ALIKES = str.maketrans(
    "аеорсухіјѕԁӏԛԝАВЕКМНОРСТХУІЈЅԚԜαοριυνκΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "aeopcyxijsdlqwABEKMHOPCTXYIJSQWaopiuvkABEZHIKMNOPTYX")
INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))  # soft hyphen, zero-widths


def skeleton(text: str) -> str:
    """What a label looks like: NFKC (full-width and compatibility forms), invisible
    characters dropped, Cyrillic and Greek look-alikes mapped to the Latin letter."""
    return unicodedata.normalize("NFKC", text).translate(INVISIBLE).translate(LOOK_ALIKES)


def label_key(label: str) -> str:
    """Labels that differ only in case, spacing, '-' or '_', or by Unicode look-alikes
    (Cyrillic "а" for Latin "a", full-width forms, zero-width characters) are near-duplicates."""
    return " ".join(re.sub(r"[-_]", " ", skeleton(label)).split()).casefold()


def usable_rows(df: pd.DataFrame, malformed: dict[int, str]) -> pd.Series:
    """Rows with a non-blank string text and label that the parser could read."""
    ok = pd.Series(True, index=df.index)
    for col in ("text", "label"):
        strings = only_strings(df[col])
        ok &= df.index.isin(strings.index[strings.str.strip().astype(bool)])
    if malformed:
        ok.iloc[list(malformed)] = False
    return ok


def row_checks(df: pd.DataFrame, ok: pd.Series, cfg: ValidateConfig, labels: LabelsConfig,
               ctx: Context, malformed: dict[int, str]) -> list[Check]:
    """Row-level checks on `df` (text and label columns present); `ok` marks usable rows."""
    checks: list[Check] = []
    if malformed:
        first = min(malformed)
        checks.append(Check("row_is_readable", None, sorted(malformed),
                            f"{len(malformed)} row(s) could not be read (first: {malformed[first]})"))
    for col in ("text", "label"):
        strings = only_strings(df[col])
        bad = sorted(int(i) for i in strings.index[strings.str.contains(CONTROL, regex=True)])
        if bad:
            checks.append(Check("values_have_no_control_characters", col, bad,
                                f"column '{col}' has {len(bad)} value(s) with control characters (e.g. NUL, ESC)"))
    good = df[ok]
    checks += _token_check(good, cfg, ctx)
    checks += _duplicate_checks(good)
    checks += label_checks(good, labels, ctx)
    return checks


def only_strings(values: pd.Series) -> pd.Series:
    """The string values of a column (its `.str` accessor refuses a column of numbers)."""
    return values[values.map(lambda v: isinstance(v, str))].astype(object)


def _token_check(good: pd.DataFrame, cfg: ValidateConfig, ctx: Context) -> list[Check]:
    if not cfg.max_tokens or ctx.count_tokens is None or good.empty:
        return []
    # Only texts that could exceed the bound are tokenised: no WordPiece, BPE or
    # byte-fallback tokenizer makes more than two tokens per UTF-8 byte (a piece and a
    # word-boundary marker), plus a few special tokens. Over-long texts already fail
    # the character bound, so a 1 MB row is not tokenised either.
    texts = good["text"][good["text"].str.len() <= cfg.max_text_chars]
    texts = texts[texts.str.encode("utf-8").str.len() * 2 + SPECIAL_TOKENS > cfg.max_tokens]
    if texts.empty:
        return []
    lengths = pd.Series(ctx.count_tokens(list(texts)), index=texts.index)
    bad = sorted(int(i) for i in lengths.index[lengths > cfg.max_tokens])
    if not bad:
        return []
    return [Check("text_token_length_at_most", "text", bad,
                  f"column 'text' has {len(bad)} value(s) longer than {cfg.max_tokens} tokens under the "
                  f"production tokenizer (longest {int(lengths.max())}; validate.max_tokens)")]


def _duplicate_checks(good: pd.DataFrame) -> list[Check]:
    checks = []
    # keep="first": the first copy is a good row; only the repeats are bad
    repeats = sorted(int(i) for i in good.index[good.duplicated(["text", "label"], keep="first")])
    if repeats:
        checks.append(Check("rows_are_unique", None, repeats,
                            f"{len(repeats)} row(s) repeat an earlier row's text and label"))
    key = normalise_all(good["text"])
    per_text = good.groupby(key)["label"].nunique()
    clash = key.isin(per_text.index[per_text > 1])
    if clash.any():
        rows = sorted(int(i) for i in good.index[clash])
        example = good.loc[rows[0]]
        others = sorted(set(good.loc[clash & (key == key[rows[0]]), "label"]))
        checks.append(Check("text_has_one_label", "label", rows,
                            f"{int((per_text > 1).sum())} text(s) appear with conflicting labels, {len(rows)} rows "
                            f"(e.g. {show(example['text'])} as {', '.join(show(o) for o in others[:3])})"))
    return checks


def label_checks(good: pd.DataFrame, labels: LabelsConfig, ctx: Context) -> list[Check]:
    """Near-duplicate label names, unknown labels (allow_new false) and rare new labels."""
    counts = Counter(good["label"])
    known_keys = {label_key(k): k for k in ctx.known_labels}
    near: dict[str, str] = {}
    new = [label for label in counts if label not in ctx.known_labels]
    by_key: dict[str, list[str]] = {}
    for label in new:
        if label_key(label) in known_keys:
            near[label] = f"known label {show(known_keys[label_key(label)])}"
        else:
            by_key.setdefault(label_key(label), []).append(label)
    for variants in by_key.values():
        main = min(variants, key=lambda v: (-counts[v], v))  # the most frequent spelling wins
        near.update({v: f"{show(main)} in this batch" for v in variants if v != main})
    checks = []
    if near:
        checks.append(_label_rows(good, near, "label_is_not_near_duplicate",
                                  "label(s) differ from another label only in case, spacing, '-' or '_', or Unicode look-alikes",
                                  [f"{show(v)} ~ {w}" for v, w in near.items()]))
    fresh = [label for label in new if label not in near]
    if fresh and not labels.allow_new:
        checks.append(_label_rows(good, dict.fromkeys(fresh, ""), "label_is_known",
                                  "label(s) production does not know (labels.allow_new is false)",
                                  [show(v) for v in fresh]))
    elif fresh:
        rare = {v: "" for v in fresh if counts[v] < labels.min_examples_new}
        if rare:
            checks.append(_label_rows(good, rare, "new_label_has_min_examples",
                                      f"new label(s) with fewer than {labels.min_examples_new} rows "
                                      "(labels.min_examples_new)", [f"{show(v)}: {counts[v]}" for v in rare]))
    return checks


def _label_rows(good: pd.DataFrame, which: dict[str, str], name: str, what: str, shown: list[str]) -> Check:
    rows = sorted(int(i) for i in good.index[good["label"].isin(list(which))])
    listed = ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
    return Check(name, "label", rows, f"{len(which)} {what}: {listed}")


def batch_checks(kept: pd.DataFrame, dropped: int, cfg: ValidateConfig, labels: LabelsConfig,
                 ctx: Context) -> list[Check]:
    """Checks on the batch as a whole, over the rows that would go on."""
    checks = []
    if dropped and len(kept) < cfg.min_rows:
        checks.append(Check("rows_after_dropping", None, [], f"after dropping {dropped} bad row(s) "
                            f"{len(kept)} remain, fewer than the {cfg.min_rows} required (min_rows)", "batch"))
    if kept.empty:
        return checks
    shares = kept["label"].value_counts(normalize=True)
    over = shares[shares > labels.max_label_share]
    if len(over):
        listed = ", ".join(f"{show(k)} {v:.0%}" for k, v in over.items())
        checks.append(Check("label_share_at_most", "label", [], f"label(s) over {labels.max_label_share:.0%} of "
                            f"the batch (labels.max_label_share): {listed}", "batch"))
    kl = label_kl(kept["label"], ctx.reference_labels)
    if kl is not None and kl > labels.max_kl:
        checks.append(Check("label_distribution_kl", "label", [], f"label distribution diverges from the "
                            f"training data behind production: KL {kl:.3f} > {labels.max_kl} (labels.max_kl)",
                            "batch", "warn" if labels.kl_action == "warn" else "fail"))
    return checks


def label_kl(batch: pd.Series, reference: dict[str, int]) -> float | None:
    """KL(batch || reference) over the labels of the reference (add-half smoothing);
    None when the batch has no such labels (a batch of new labels has nothing to compare)."""
    names = sorted(reference)
    counts = batch[batch.isin(names)].value_counts()
    if not names or counts.empty:
        return None
    p = np.array([counts.get(n, 0) for n in names], dtype=float) + 0.5
    q = np.array([reference[n] for n in names], dtype=float) + 0.5
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))
