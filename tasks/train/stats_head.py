"""A class-statistics head: closed-form LDA over a frozen encoder's sentence features.

`train.stats_head: alone` replaces fine-tuning with statistics. The encoder (the base
model's, never updated) maps each sentence to its mean-pooled, L2-normalised last hidden
state; random Fourier features (`stats_features` of them, bandwidth `stats_bandwidth`)
make that a kernel feature z (KLDA, arXiv 2412.15571; RanPAC, arXiv 2307.02251). The
head keeps, per label, the row count and the sum of z, and one shared sum of z zᵀ over
every row seen. Those are sums, so adding a delivery's rows gives exactly the statistics
of all rows seen at once, in any order: nothing the model learned can be forgotten, and
no replay or optimizer step is needed. The classifier is linear discriminant analysis
on them: per-label means, one shared covariance shrunk towards a scaled identity
(`stats_shrinkage`), equal priors:

    logit_c(z) = w_c · z + b_c,   w_c = Σ⁻¹ μ_c,   b_c = -½ μ_c · w_c

What a version stores (`class_stats.npz`, next to the transformers files and covered by
the integrity manifest): the counts, sums and shared sum (float64: a later delivery
adds to them exactly), the feature map (omega, phase) and the solved weights. Its size
is about 8·D² bytes (D = 4096: 134 MB), whatever the number of rows.

The saved directory stays a transformers directory (config, safetensors, tokenizer);
its `classifier` rows are not the predictor, which `config.json` says
(`ratchet_head: class_stats`). `load_classifier` wraps such a directory in
`StatsHeadModel`, whose forward returns the statistics head's logits, so evaluation,
drift and serving use it without knowing. Sentence classifiers only (params validation
refuses it for `task.type: ner`).

The encoder never changes along a statistics lineage, so a sentence's pooled vector is
the same for every version: a version keeps those of the exam rows it answered
(`sentence_vectors.npz`, keyed by a hash of the text and `model.max_length`, under the
integrity manifest), and the next candidate starts from them, so an exam runs the
encoder over its new rows only (`StatsHeadModel.text_logits`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

STATS_FILE = "class_stats.npz"
VECTORS_FILE = "sentence_vectors.npz"  # pooled encoder vectors of the exam rows a version answered
HEAD_MARK = "class_stats"  # config.json `ratchet_head` of a version whose predictor is this head


@dataclass
class ClassStats:
    """Sufficient statistics of every labeled row seen, in the random-feature space."""

    labels: list[str]
    counts: np.ndarray        # (labels,) int64
    sums: np.ndarray          # (labels, D) float64: sum of z per label
    scatter: np.ndarray       # (D, D) float64: sum of z zᵀ over all rows
    omega: np.ndarray         # (hidden, D) float32: the random feature map
    phase: np.ndarray         # (D,) float32
    shrinkage: float
    weights: np.ndarray | None = None  # (labels, D) float32, solved
    bias: np.ndarray | None = None     # (labels,) float32

    @classmethod
    def empty(cls, hidden: int, features: int, bandwidth: float, shrinkage: float, seed: int) -> "ClassStats":
        rng = np.random.default_rng([seed, 4])
        return cls(labels=[], counts=np.zeros(0, dtype=np.int64), sums=np.zeros((0, features)),
                   scatter=np.zeros((features, features)),
                   omega=(rng.standard_normal((hidden, features)) / bandwidth).astype(np.float32),
                   phase=rng.uniform(0, 2 * np.pi, features).astype(np.float32), shrinkage=shrinkage)

    @property
    def features(self) -> int:
        return self.omega.shape[1]

    @property
    def nbytes(self) -> int:
        """The arrays' size: what a version stores, less the file's few headers."""
        arrays = (self.counts, self.sums, self.scatter, self.omega, self.phase, self.weights, self.bias)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def featurize(self, pooled: torch.Tensor) -> torch.Tensor:
        """Random Fourier features of L2-normalised sentence vectors (rows)."""
        omega = torch.as_tensor(self.omega, device=pooled.device)
        phase = torch.as_tensor(self.phase, device=pooled.device)
        unit = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return (2.0 / self.features) ** 0.5 * torch.cos(unit @ omega + phase)

    def ensure(self, labels: list[str]) -> None:
        """Give every label in `labels` an id (the next free one, in that order)."""
        for label in dict.fromkeys(labels):
            if label not in self.labels:
                self.labels.append(label)
        grow = len(self.labels) - len(self.counts)
        if grow:
            self.counts = np.concatenate([self.counts, np.zeros(grow, dtype=np.int64)])
            self.sums = np.concatenate([self.sums, np.zeros((grow, self.features))])
        self.weights = self.bias = None

    def add(self, z: np.ndarray, labels: list[str]) -> None:
        """Add rows (features z, one label each); a new label gets the next id."""
        self.ensure(labels)
        index = {label: i for i, label in enumerate(self.labels)}
        ids = np.array([index[label] for label in labels], dtype=np.int64)
        z = np.asarray(z, dtype=np.float64)
        np.add.at(self.sums, ids, z)
        self.counts += np.bincount(ids, minlength=len(self.labels))
        self.scatter += z.T @ z
        self.weights = self.bias = None

    def solve(self) -> None:
        """LDA weights from the statistics: shared within-label covariance, shrunk."""
        seen = self.counts > 0
        means = np.zeros_like(self.sums)
        means[seen] = self.sums[seen] / self.counts[seen, None]
        n, k = int(self.counts.sum()), int(seen.sum())
        within = (self.scatter - (self.counts[:, None] * means).T @ means) / max(n - k, 1)
        d = self.features
        scale = np.trace(within) / d or 1.0  # one row per label: no spread to scale by, nearest mean
        cov = (1 - self.shrinkage) * within + self.shrinkage * scale * np.eye(d)
        weights = np.linalg.solve(cov, means.T).T
        bias = -0.5 * (weights * means).sum(1)
        bias[~seen] = -1e9  # a label with no rows is never predicted
        self.weights, self.bias = weights.astype(np.float32), bias.astype(np.float32)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            self.solve()
        w = torch.as_tensor(self.weights, device=z.device)
        return z @ w.T + torch.as_tensor(self.bias, device=z.device)

    def digest(self) -> str:
        h = hashlib.sha256(repr((self.labels, self.shrinkage)).encode())
        for part in (self.counts, self.sums, self.omega, self.phase):
            h.update(np.ascontiguousarray(part).tobytes())
        return h.hexdigest()

    def save(self, directory: str | Path) -> Path:
        if self.weights is None:
            self.solve()
        path = Path(directory) / STATS_FILE
        np.savez(path, labels=np.array(self.labels, dtype=object).astype(str), counts=self.counts, sums=self.sums,
                 scatter=self.scatter, omega=self.omega, phase=self.phase, shrinkage=np.float64(self.shrinkage),
                 weights=self.weights, bias=self.bias)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "ClassStats":
        with np.load(Path(directory) / STATS_FILE) as f:
            return cls(labels=[str(x) for x in f["labels"]], counts=f["counts"], sums=f["sums"],
                       scatter=f["scatter"], omega=f["omega"], phase=f["phase"], shrinkage=float(f["shrinkage"]),
                       weights=f["weights"], bias=f["bias"])


def mean_pooled(encoder_output, attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = encoder_output.last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class StatsHeadModel(torch.nn.Module):
    """A saved sentence classifier whose predictor is the class-statistics head: the
    forward pass of `inner`'s encoder, mean-pooled, through `stats`. Quacks like the
    transformers model for what Ratchet calls on it (`config`, `eval`, `forward` with
    `.logits` and `.hidden_states`, `save_pretrained`)."""

    def __init__(self, inner: torch.nn.Module, stats: ClassStats, vectors: dict[str, np.ndarray] | None = None):
        super().__init__()
        self.inner = inner
        self.stats = stats
        self.vectors = dict(vectors or {})  # vector_key(text, max_length) -> pooled float32 vector

    @property
    def config(self):
        return self.inner.config

    @property
    def device(self):
        return self.inner.device

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                **_ignored) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.inner.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids, output_hidden_states=output_hidden_states)
        logits = self.stats.logits(self.stats.featurize(mean_pooled(out, attention_mask)))
        return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)

    @torch.inference_mode()
    def text_logits(self, tokenizer, texts: list[str], *, max_length: int, batch_size: int,
                    remember: bool = False) -> torch.Tensor:
        """The head's logits for `texts`, in order: the encoder runs only over texts whose
        pooled vector is not known (length-sorted batches); `remember` keeps the new ones
        (the exam's rows; a server answering traffic does not)."""
        vectors = self.pooled_vectors(tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                      remember=remember)
        parts = [self.stats.logits(self.stats.featurize(torch.as_tensor(vectors[i:i + 1024])))
                 for i in range(0, len(vectors), 1024)]  # D features a row: bounded
        return torch.cat(parts) if parts else torch.zeros(0, len(self.stats.labels))

    @torch.inference_mode()
    def pooled_vectors(self, tokenizer, texts: list[str], *, max_length: int, batch_size: int,
                       remember: bool = False) -> np.ndarray:
        """The pooled encoder vectors of `texts`, in order: the known ones looked up, the
        encoder run over the rest; `remember` keeps those."""
        keys = [vector_key(t, max_length) for t in texts]
        known = self.vectors if remember else dict(self.vectors)
        todo = [i for i, k in enumerate(keys) if k not in known]
        for idx, pooled in pooled_batches(self.inner.base_model.eval(), tokenizer, texts, todo,
                                          max_length=max_length, batch_size=batch_size):
            known.update((keys[i], v) for i, v in zip(idx, pooled.float().cpu().numpy()))
        if not keys:
            return np.zeros((0, self.config.hidden_size), dtype=np.float32)
        return np.stack([known[k] for k in keys])

    def save_vectors(self, path) -> Path | None:
        """The known pooled vectors into `path` (a candidate's directory, before it is sealed)."""
        if not self.vectors:
            return None
        keys = sorted(self.vectors)
        out = Path(path) / VECTORS_FILE
        np.savez(out, keys=np.array(keys, dtype=str), vectors=np.stack([self.vectors[k] for k in keys]))
        return out

    def save_pretrained(self, path, **kwargs) -> None:
        self.inner.config.ratchet_head = HEAD_MARK
        self.inner.save_pretrained(path, **kwargs)
        self.stats.save(path)
        self.save_vectors(path)


def vector_key(text: str, max_length: int) -> str:
    return hashlib.sha256(f"{max_length}\0{text}".encode()).hexdigest()[:32]


def load_vectors(directory: str | Path) -> dict[str, np.ndarray]:
    """A version's stored pooled vectors ({} when it has none)."""
    path = Path(directory) / VECTORS_FILE
    if not path.exists():
        return {}
    with np.load(path) as f:
        return dict(zip((str(k) for k in f["keys"]), f["vectors"]))


def has_stats(directory: str | Path | None) -> bool:
    return directory is not None and (Path(directory) / STATS_FILE).exists()


def pooled_batches(encoder, tokenizer, texts: list[str], positions, *, max_length: int, batch_size: int):
    """(positions, mean-pooled last hidden states) of `texts[positions]` in length-sorted
    batches (less padding per batch)."""
    positions = list(positions)
    order = [positions[j] for j in np.argsort([len(texts[i]) for i in positions], kind="stable")]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt").to(encoder.device)
        yield idx, mean_pooled(encoder(**enc), enc["attention_mask"])


@torch.inference_mode()
def sentence_features(model: torch.nn.Module, tokenizer, texts: list[str], stats: ClassStats, *, max_length: int,
                      batch_size: int = 128, device: torch.device | None = None) -> np.ndarray:
    """z for every text, in input order (length-sorted inside for less padding)."""
    encoder = (model.inner if isinstance(model, StatsHeadModel) else model).base_model.eval()
    if device is not None:
        encoder.to(device)
    out = np.zeros((len(texts), stats.features), dtype=np.float64)
    for idx, pooled in pooled_batches(encoder, tokenizer, texts, range(len(texts)), max_length=max_length,
                                      batch_size=batch_size):
        out[idx] = stats.featurize(pooled).double().cpu().numpy()
    return out
