"""IOB2 tags and entity spans: the vocabulary of the NER path.

Used by validation (well-formed IOB2), the model (label maps grow by entity type) and
evaluation (entity spans, CoNLL convention). A tag is `O`, `B-TYPE` or `I-TYPE`.
"""

from __future__ import annotations

import re

TAG = re.compile(r"^(O|[BI]-[^\s]+)$")


def entity_type(tag: str) -> str | None:
    return None if tag == "O" else tag[2:]


def types_of(tags) -> list[str]:
    """Entity types named by any tag, sorted."""
    return sorted({t[2:] for t in tags if t != "O" and len(t) > 2})


def labels_for(types: list[str], base: list[str] | None = None) -> list[str]:
    """The label list of a tagger: `base` unchanged (ids never move), then B-/I- of each new
    type in sorted order; `O` first when starting from nothing."""
    labels = list(base) if base else ["O"]
    for kind in sorted(types):
        for tag in (f"B-{kind}", f"I-{kind}"):
            if tag not in labels:
                labels.append(tag)
    return labels


def iob2_errors(tags: list[str]) -> list[tuple[int, str]]:
    """(token index, why) for each tag that breaks IOB2: not O/B-X/I-X, or an I-X that does
    not continue a B-X or I-X of the same type."""
    errors, prev = [], "O"
    for i, tag in enumerate(tags):
        if not TAG.match(tag):
            errors.append((i, f"tag {tag!r} is not O, B-TYPE or I-TYPE"))
            prev = "O"
            continue
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            errors.append((i, f"{tag} follows {prev} (an entity must start with B-{tag[2:]})"))
        prev = tag
    return errors


def spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities as (type, start, end-exclusive), by the conlleval / seqeval default rules:
    an entity starts at B-X, or at an I-X that does not continue an X; it ends before the
    next tag that is not I-X. So a model's ill-formed I-X after O still counts as an entity,
    exactly as CoNLL scoring counts it."""
    out, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, this = (tag[0], tag[2:]) if tag != "O" and len(tag) > 2 else ("O", None)
        continues = prefix == "I" and this == kind
        if kind is not None and not continues:
            out.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = this, i
    return out
