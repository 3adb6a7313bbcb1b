"""Validate a NER batch: the gate between intake and drift for `task.type: ner`.

Per sentence: `tokens` and `tags` are lists of strings of the same length, not empty,
at most `ner.max_sentence_tokens` words, and the tags are well-formed IOB2 (an `I-X`
continues a `B-X` or `I-X`; never after `O` or `B-Y`). Each problem names the sentence
(1-based, as delivered) and the token (0-based) so a data team can find it. Per batch:
at least `ner.min_sentences` sentences go on, and entity types production does not know
are allowed only under `ner.allow_new_types`, each with `ner.min_mentions_new` mentions.

The result is the classification path's `ValidationResult` (same verdicts, same
quarantine and reports); its "rows" are sentences. Bad sentences reject the batch or
are dropped, per `validate.on_bad_rows`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pandas as pd

from tasks.core.config import NerConfig, ValidateConfig
from tasks.ner.tags import iob2_errors, spans, types_of
from tasks.validate.checks import MAX_EXAMPLES, Failure, ValidationResult


def _is_str_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)


def sentence_problems(tokens, tags, max_tokens: int) -> list[tuple[str, str]]:
    """(check, message) for one sentence; the message names the token index where one applies."""
    if not _is_str_list(tokens) or not _is_str_list(tags):
        return [("tokens_and_tags_are_string_lists", "tokens and tags must be lists of strings")]
    if len(tokens) != len(tags):
        return [("tokens_and_tags_same_length", f"{len(tokens)} tokens but {len(tags)} tags")]
    if not tokens:
        return [("sentence_not_empty", "empty sentence (no tokens)")]
    out = []
    blank = [i for i, t in enumerate(tokens) if not t.strip()]
    if blank:
        out.append(("tokens_not_blank", f"token {blank[0]} is blank"))
    if max_tokens and len(tokens) > max_tokens:
        out.append(("sentence_length_at_most", f"{len(tokens)} tokens > ner.max_sentence_tokens {max_tokens}"))
    out += [("tags_are_iob2", f"token {i}: {why}") for i, why in iob2_errors(list(tags))]
    return out


def _group(problems: dict[int, list[tuple[str, str]]]) -> list[Failure]:
    """One Failure per check; examples are 1-based sentence numbers, and the message
    spells out the first few as 'sentence S token T: why'."""
    by_check: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for position, items in sorted(problems.items()):
        for check, message in items:
            by_check[check].append((position + 1, message))
    failures = []
    for check, hits in by_check.items():
        sentences = sorted({s for s, _ in hits})
        shown = "; ".join(f"sentence {s}: {m}" for s, m in hits[:MAX_EXAMPLES])
        more = f" (and {len(hits) - MAX_EXAMPLES} more)" if len(hits) > MAX_EXAMPLES else ""
        failures.append(Failure(check, "tags" if "tag" in check else "tokens", len(sentences),
                                sentences[:MAX_EXAMPLES], shown + more))
    return failures


def _type_checks(frame: pd.DataFrame, cfg: NerConfig, known: list[str] | None) -> list[Failure]:
    """New entity types: allowed by params, each with enough mentions."""
    if known is None:  # no production model yet: every type is new and allowed
        return []
    mentions = Counter(kind for tags in frame["tags"] for kind, _, _ in spans(tags))
    new = sorted(set(types_of(t for tags in frame["tags"] for t in tags)) - set(known))
    if not new:
        return []
    if not cfg.allow_new_types:
        return [Failure("entity_type_is_known", "tags", sum(mentions[k] for k in new), [],
                        f"entity types production does not know: {', '.join(new)} (ner.allow_new_types is false; "
                        f"known: {', '.join(known) or 'none'})")]
    few = [k for k in new if mentions[k] < cfg.min_mentions_new]
    if few:
        return [Failure("new_entity_type_has_min_mentions", "tags", len(few), [],
                        "new entity types with fewer than ner.min_mentions_new "
                        f"({cfg.min_mentions_new}) mentions: " + ", ".join(f"{k} ({mentions[k]})" for k in few))]
    return []


def validate_ner(frame: pd.DataFrame | None, cfg: NerConfig, validate_cfg: ValidateConfig, *,
                 known_types: list[str] | None = None, parse_error: str | None = None) -> ValidationResult:
    """Check a parsed NER batch; `known_types` are production's entity types (None before the first)."""
    if frame is None:
        return ValidationResult(False, 0, [Failure("file_parses", None, 1, [], parse_error or "unreadable")],
                                verdict="rejected")
    frame = frame.reset_index(drop=True)
    problems = {i: p for i, (tokens, tags) in enumerate(zip(frame["tokens"], frame["tags"]))
                if (p := sentence_problems(tokens, tags, cfg.max_sentence_tokens))}
    bad = _group(problems)
    drop = validate_cfg.on_bad_rows == "drop_rows"
    failures = [] if drop else list(bad)
    kept = frame.drop(index=list(problems)) if drop else frame
    if len(kept) < cfg.min_sentences:
        failures.append(Failure("sentence_count_at_least", None, len(kept), [],
                                f"{len(kept)} usable sentences < ner.min_sentences {cfg.min_sentences}"))
    if not problems or drop:  # type checks need well-formed tags
        failures += _type_checks(kept, cfg, known_types)
    passed = not failures
    warnings = bad if drop else []
    verdict = "rejected" if not passed else ("accepted_with_warnings" if warnings else "accepted")
    dropped = {i: [c for c, _ in p] for i, p in problems.items()} if drop and passed else {}
    return ValidationResult(passed, len(frame), failures, warnings, verdict, dropped=dropped,
                            file_rows=list(range(1, len(frame) + 1)))


def types_of_version(reg, version: str) -> list[str]:
    """Entity types a registry version's tagger knows."""
    return types_of(json.loads((reg.path(version) / "config.json").read_text())["id2label"].values())
