"""The token-classification model: build, load, grow, and align labels to sub-words.

The same base encoders as the classification path (packaged MiniLM, the tiny 2-layer
BERT for tests, or a `save_pretrained` directory) with `AutoModelForTokenClassification`
on top. Labels are IOB2 tags; a new entity type adds its `B-`/`I-` rows to the head
with the old rows copied exactly (`tasks.train.model.grow_head`), so old tags keep their ids.
Words are split into sub-words by the tokenizer; each word's tag goes on its first
sub-word and the rest get -100, which the loss ignores (the BERT paper's NER recipe),
and a word's prediction is read from its first sub-word.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForTokenClassification, AutoTokenizer, BertForTokenClassification

from tasks.train.model import Classifier, grow_head, load_base
from tasks.ner.tags import labels_for, types_of

IGNORE = -100


def load_base_tagger(base: str, labels: list[str], seed: int) -> Classifier:
    """A fresh tagger over `labels` on a base encoder ("minilm", "tiny" or a path); the head is seeded."""
    return load_base(base, labels, seed, BertForTokenClassification, AutoModelForTokenClassification)


def load_tagger(path: str | Path) -> Classifier:
    path = Path(path)
    return Classifier(AutoModelForTokenClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path))


def tagger_types(clf: Classifier) -> list[str]:
    return types_of(clf.labels)


def grow_types(clf: Classifier, types: list[str], seed: int) -> tuple[Classifier, list[str]]:
    """Add B-/I- rows for entity types the tagger does not know; returns (tagger, new types)."""
    new = sorted(set(types) - set(tagger_types(clf)))
    added = [tag for tag in labels_for(new, clf.labels) if tag not in clf.labels]
    return grow_head(clf, added, seed), new


def align_labels(word_ids: list[int | None], word_tags: list[int]) -> list[int]:
    """Sub-word labels: a word's tag id on its first sub-word, -100 on the others and on
    special tokens. Words cut off by truncation simply have no sub-word."""
    out, previous = [], None
    for word in word_ids:
        out.append(IGNORE if word is None or word == previous else word_tags[word])
        previous = word
    return out


def encode_words(clf: Classifier, sentences: list[list[str]], max_length: int):
    """The tokenizer's encoding of pre-split words (input ids and, per sentence, word_ids)."""
    enc = clf.tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    return enc["input_ids"], [enc.word_ids(i) for i in range(len(sentences))]


def first_subword_positions(word_ids: list[int | None]) -> dict[int, int]:
    """word index -> position of its first sub-word."""
    out: dict[int, int] = {}
    for pos, word in enumerate(word_ids):
        if word is not None and word not in out:
            out[word] = pos
    return out
