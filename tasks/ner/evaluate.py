"""Evaluate a tagger: entity-level precision, recall and F1 on the NER exam.

Scoring follows the CoNLL-2003 convention (conlleval, seqeval's default mode): an
entity counts as found only when its type and exact span match a gold entity; micro
P/R/F1 pool the counts of every type, macro F1 averages the per-type F1s. A word's
prediction is the model's tag on its first sub-word; words cut off by `model.max_length`
are predicted `O` (a miss, never silently skipped).

Each held-out sentence is scored on the entity types its own batch annotates (a batch
from before ORG existed says nothing about organisations, so a candidate that finds
them there is not penalised). Per-sentence counts (tp, fp, fn) go to the gate, which
bootstraps F1 over sentences.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import torch

from tasks.judge.evaluate import fill_in, row_keys
from tasks.train.model import Classifier
from tasks.ner.model import encode_words, first_subword_positions
from tasks.ner.tags import spans, types_of


def predict_tags(clf: Classifier, sentences: list[list[str]], *, batch_size: int, max_length: int,
                 pooled: np.ndarray | None = None) -> list[list[str]]:
    """Predicted IOB2 tags per word, in input order. `pooled`: a (sentences, hidden) array
    filled from the same forward pass with each sentence's mean-pooled last layer (drift's
    embeddings; tasks/ner/drift.py `sentence_embeddings` computes the same)."""
    model, labels = clf.model.eval(), clf.labels
    order = np.argsort([len(s) for s in sentences], kind="stable")
    out: list[list[str]] = [[] for _ in sentences]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, word_ids = encode_words(clf, [list(sentences[i]) for i in idx], max_length)
            padded = clf.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
            result = model(**padded, output_hidden_states=pooled is not None)
            if pooled is not None:
                hidden, mask = result.hidden_states[-1], padded["attention_mask"].unsqueeze(-1)
                mask = mask.to(hidden.dtype)
                pooled[idx] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().numpy()
            pred = result.logits.argmax(-1).tolist()
            for row, i in enumerate(idx):
                first = first_subword_positions(word_ids[row])
                out[i] = [labels[pred[row][first[w]]] if w in first else "O" for w in range(len(sentences[i]))]
    return out


def counts(gold: list[str], pred: list[str], types: set[str] | None = None) -> dict[str, Counter]:
    """{"tp"|"fp"|"fn": Counter by type} for one sentence; only `types` when given."""
    g, p = spans(gold), spans(pred)
    if types is not None:
        g, p = {s for s in g if s[0] in types}, {s for s in p if s[0] in types}
    return {"tp": Counter(s[0] for s in g & p), "fp": Counter(s[0] for s in p - g),
            "fn": Counter(s[0] for s in g - p)}


def prf(tp: int, fp: int, fn: int, digits: int | None = 4) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    rnd = (lambda x: round(x, digits)) if digits is not None else float
    return {"precision": rnd(p), "recall": rnd(r), "f1": rnd(f), "support": tp + fn}


def score(per_sentence: list[dict[str, Counter]]) -> dict:
    """Micro and macro P/R/F1 and per-type P/R/F1/support over sentences' counts."""
    total = {k: sum((c[k] for c in per_sentence), Counter()) for k in ("tp", "fp", "fn")}
    types = sorted(set(total["tp"]) | set(total["fp"]) | set(total["fn"]))
    exact = {t: prf(total["tp"][t], total["fp"][t], total["fn"][t], digits=None) for t in types}
    per_type = {t: {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()} for t, d in exact.items()}
    micro = prf(sum(total["tp"].values()), sum(total["fp"].values()), sum(total["fn"].values()))
    # seqeval's macro average: every type in gold or predictions (a type only predicted scores 0)
    macro = round(float(np.mean([exact[t]["f1"] for t in types])), 4) if types else 0.0
    return {"rows": len(per_sentence), **micro, "macro_f1": macro, "per_type": per_type}


def batch_types(exam: pd.DataFrame) -> dict[str, set[str]]:
    """The entity types each batch annotates (those its held-out tags name)."""
    return {str(b): set(types_of(t for tags in g["tags"] for t in tags)) for b, g in exam.groupby("batch_id")}


def _sheet(per: list[dict[str, Counter]], exam: pd.DataFrame) -> dict:
    out = {"overall": score(per), "slices": {}, "batches": {}}
    for key, column in (("slices", "slice"), ("batches", "batch_id")):
        for name, group in exam.groupby(column, sort=True):
            out[key][str(name)] = score([per[i] for i in group.index])
    return out


def evaluate_tagger(clf: Classifier | None, exam: pd.DataFrame, new_batch_id: str | list[str], *, batch_size: int,
                    max_length: int, annotated: dict[str, set[str]] | None = None,
                    known: dict[int, str] | None = None) -> dict:
    """Score sheets as for a classifier (tasks/judge/evaluate.py): "all", "old" (None when the
    exam had no old rows), "new" (each {"overall", "slices", "batches"}), and "rows": per
    sentence tp/fp/fn (the types its batch annotates), correct (1 when every entity was
    found exactly and nothing else), the predicted tags, slice, key and is_new, for the
    gate. `new_batch_id` may list several batches (pending ones are new too). `clf` None
    (no champion) scores as predicting nothing. `known`: this tagger's answers already given
    on some sentences (position: tags joined by spaces, as "pred" holds them), not asked again."""
    exam = exam.reset_index(drop=True)
    sentences = [list(t) for t in exam["tokens"]]
    given = {i: str(p).split() for i, p in (known or {}).items()}  # IOB2 tags hold no spaces
    preds = (fill_in(given, len(sentences), lambda at: predict_tags(clf, [sentences[i] for i in at],
                                                                   batch_size=batch_size, max_length=max_length))
             if clf is not None else [["O"] * len(s) for s in sentences])
    annotated = annotated if annotated is not None else batch_types(exam)
    per = [counts(list(g), p, annotated.get(str(b))) for g, p, b in zip(exam["tags"], preds, exam["batch_id"])]
    new_ids = [new_batch_id] if isinstance(new_batch_id, str) else list(new_batch_id)
    is_new = exam["batch_id"].astype(str).isin(new_ids)

    def part(mask) -> dict:
        sub = exam[mask].reset_index(drop=True)
        return _sheet([c for c, m in zip(per, mask) if m], sub)

    totals = {k: [sum(c[k].values()) for c in per] for k in ("tp", "fp", "fn")}
    return {"all": _sheet(per, exam), "old": part(~is_new) if (~is_new).any() else None, "new": part(is_new),
            "truncated_texts": 0,
            "rows": totals | {
                "correct": [int(fp == 0 and fn == 0) for fp, fn in zip(totals["fp"], totals["fn"])],
                "pred": [" ".join(p) for p in preds], "key": row_keys(exam),
                "slice": exam["slice"].astype(str).tolist(), "batch_id": exam["batch_id"].astype(str).tolist(),
                "is_new": is_new.tolist()}}
