"""Configuration: params.yaml loaded into one validated, frozen object.

Every stage of the path (validate, drift, replay, finetune, evaluate, gate) reads its
own section from here, and dvc.yaml names the same keys. A missing section falls back
to defaults; an unknown key or a value of the wrong type is a `ConfigError` that names
the key, so a typo never silently becomes a default.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """params.yaml is missing, malformed, or has a bad key or value."""


@dataclass(frozen=True)
class TaskConfig:
    # a registered task type (tasks/kinds/): classification (batches of text,label), ner
    # (batches of tokens,tags, IOB2, see tasks/ner/)
    type: str = "classification"


@dataclass(frozen=True)
class NerConfig:
    """Checks of NER batches (task.type: ner); the classification path never reads it."""

    # entity types production does not know yet (a tag B-X/I-X with a new X)
    allow_new_types: bool = True
    # a new entity type needs at least this many mentions in the batch
    min_mentions_new: int = 1
    min_sentences: int = 5
    # words per sentence; a longer one is a bad row (0 = no check)
    max_sentence_tokens: int = 128


@dataclass(frozen=True)
class ModelConfig:
    base: str = "minilm"
    max_length: int = 64


@dataclass(frozen=True)
class IntakeConfig:
    # share of rows held out for the exam when a batch has no `split` column
    test_share: float = 0.2
    # a delivered file over this many bytes is rejected (quarantined, exit 4) from its
    # size alone (stat, or S3 HEAD): it is never parsed nor held in memory. 0 = no limit
    max_bytes: int = 1_073_741_824


@dataclass(frozen=True)
class ValidateConfig:
    min_rows: int = 10
    min_text_chars: int = 1
    max_text_chars: int = 2000
    # tokens under the production tokenizer (special tokens included); 0 = no check
    max_tokens: int = 512
    # reject_batch: any bad row rejects the batch; drop_rows: bad rows are quarantined
    # with their reasons and the rest goes on
    on_bad_rows: str = "reject_batch"
    # how delivered CSV/JSONL bytes are decoded ("utf-8" also accepts a BOM)
    encoding: str = "utf-8"
    # endpoint for s3:// batch sources; empty = the standard AWS settings
    s3_endpoint: str = ""


@dataclass(frozen=True)
class LabelsConfig:
    # labels production does not know yet; each needs at least min_examples_new rows
    allow_new: bool = True
    min_examples_new: int = 2
    # no label may hold more than this share of the batch (1.0 = no limit)
    max_label_share: float = 1.0
    # KL divergence of the batch's known-label distribution from the training data behind
    # production; over the bound it is a warning or a failure
    max_kl: float = 1.0
    kl_action: str = "warn"


@dataclass(frozen=True)
class DriftConfig:
    drift_share: float = 0.5
    max_reference_rows: int = 5000
    max_current_rows: int = 10000
    max_embed_rows: int = 400
    embedding_method: str = "model"
    embedding_threshold: float = 0.7
    min_slice_rows: int = 50
    max_quality_drop: float = 0.1


@dataclass(frozen=True)
class RetrainConfig:
    # always | drift | quality_drop | drift_or_quality (see tasks/drift/policy.py). Without a
    # `retrain` section a workspace retrains every accepted batch, as before the policy
    # existed; the shipped params.yaml opts into drift_or_quality.
    when: str = "always"
    min_rows: int = 0
    min_interval_hours: float = 0.0


@dataclass(frozen=True)
class ReplayConfig:
    strategy: str = "reservoir"
    capacity: int = 2000
    ratio: float = 1.0
    # where replayed rows come from: the version's bounded buffer, or every training row
    # of production's lineage kept in data/ (a remediation rung: much more to replay)
    pool: str = "buffer"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 13
    precision: str = "auto"
    device: str = "auto"
    # 0 = no limit; otherwise training stops after this many optimizer steps
    max_steps: int = 0
    # epochs without a better dev loss before stopping (0 = off); best dev weights are kept
    early_stopping_patience: int = 0
    # share of the new train rows held out as dev when the batch brings no dev rows
    dev_share: float = 0.1
    # LwF: weight of the KL term to the champion's outputs on replayed rows (0 = off)
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    # embeddings + this many lowest encoder layers get no updates
    freeze_layers: int = 0
    # optimizer steps between checkpoints (0 = none); a rerun resumes from the last one
    checkpoint_every: int = 100
    # a small delivery still gets this many optimizer steps: epochs are added until it
    # does (max_steps and early stopping still end training); 0 = `epochs` only
    min_steps: int = 0
    # learning rate of the task head (classifier rows) relative to `lr`: a freshly
    # initialised head learns too slowly at the encoder's rate
    head_lr_scale: float = 1.0
    # learning rate of the encoder relative to `lr` when fine-tuning a promoted version
    # (not the base model): a slower encoder forgets less (SLCA)
    encoder_lr_scale: float = 1.0
    # update methods against forgetting in the head (tasks/train/forgetting.py), all off by
    # default: the champion's head rows kept exactly; old labels absent from a batch's new
    # rows masked out of their softmax (ER-ACE); new rows scaled to the old rows' norm (WA)
    freeze_old_head: bool = False
    mask_absent_old: bool = False
    align_new_head: bool = False
    # after training, this many epochs of the head alone on a class-balanced subset of the
    # training rows (classifier re-balancing; 0 = off; sentence classifiers only)
    rebalance_head_epochs: int = 0
    # the class-statistics head (tasks/train/stats_head.py): "alone" = no fine-tuning; the
    # base encoder stays frozen and the head is closed-form LDA over random Fourier
    # features of its sentence vectors, from per-label sums kept with the version (exact
    # over every row seen, so nothing is forgotten); "off" = the trained head; "auto" =
    # alone for sentence classifiers, off for taggers (`stats_head_on`). Features (D): the
    # statistics take 8*D^2 bytes per version.
    stats_head: str = "off"
    stats_features: int = 4096
    stats_bandwidth: float = 1.5
    stats_shrinkage: float = 0.01
    # data-parallel fine-tuning: N processes (gloo on CPU, NCCL with one GPU each), every
    # batch split across them and the gradients all-reduced; the same steps, schedule and
    # data order as 1 process (tasks/train/parallel.py)
    processes: int = 1


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 128
    # the champion answers only the exam rows it has no stored answer for (tasks/judge/reuse.py);
    # false: it answers every row again. The score sheets are the same either way.
    reuse_answers: bool = True
    # the exam's model answers in row shards on Dask (flows/exam_dask.py): "" = one process,
    # "local" = a LocalCluster of `dask_workers` processes, else a scheduler address
    dask: str = ""
    dask_workers: int = 2


@dataclass(frozen=True)
class GateConfig:
    tolerance: float = 0.05
    min_new_slice_score: float = 0.5
    alpha: float = 0.05
    min_slice_size: int = 20
    n_resamples: int = 2000  # the NER gate's bootstrap
    # cumulative floor: no old slice below its best in the lineage by more than this
    max_total_drop: float = 0.03
    # share of old exam rows the champion got right and the candidate wrong
    max_negative_flip_rate: float = 0.05
    # the floor tells forgetting from confusion with labels learned later: an old row the
    # candidate answers with a label its slice's best version never knew is left out of
    # the floor and counted here instead; a slice fails when a one-sided binomial test
    # shows that share above this limit. 0 = no allowance: such rows count as forgetting.
    max_new_label_confusion: float = 0.05
    # planned false rejection of an unchanged candidate, split over the decision's checks
    # (0.05 planned keeps the measured rate under 10%: benchmarks/gate_oc.py)
    max_false_rejection: float = 0.05
    # least churn assumed when planning power: the share of rows an unchanged candidate
    # answers differently from its reference (estimated from positive flips when larger)
    planning_flip_rate: float = 0.03
    # flipped rows written beside the decision (flips.csv) for review
    max_flip_rows: int = 200


@dataclass(frozen=True)
class RemediationConfig:
    """After a rejection, retry within the run with stronger anti-forgetting settings."""

    # attempts in all, the first (plain params) included; 1 = no remediation
    max_attempts: int = 3
    # no new attempt starts after this many seconds of the run's training and judging
    time_budget_seconds: float = 3600.0
    # rung i (attempt i + 1): dotted overrides applied on top of params, e.g.
    # {"train.distill_weight": 1.0}; each is validated like params.yaml itself
    ladder: tuple = ()


@dataclass(frozen=True)
class AuditConfig:
    # the delivery `dvc repro` replays, and the registry version it starts from
    # ("none" = the base model), so any promotion can be rebuilt stage by stage
    batch: str = "data/landing/clinc150/01_banking.csv"
    parent: str = "none"
    # after each promotion: git commit data.dvc/models/versions.dvc and GTO-style tags
    # (off by default, so a run in someone's clone never commits behind their back)
    git_commit: bool = False


@dataclass(frozen=True)
class RegistryConfig:
    # s3://bucket/prefix every promotion is mirrored to ("" = the local registry only);
    # endpoint_url for S3-compatible stores ("" = the standard AWS settings)
    mirror: str = ""
    endpoint_url: str = ""
    # an MLflow tracking/registry URI every promotion is exported to ("" = none; needs the
    # `mlflow` extra): sqlite:///mlflow.db (relative to the workspace) or http://host:5000.
    # The `champion` alias of `mlflow_model` follows production; artifacts "" = beside a
    # SQLite file, else the server's default
    mlflow_uri: str = ""
    mlflow_model: str = "ratchet"
    mlflow_artifacts: str = ""


@dataclass(frozen=True)
class OpsConfig:
    # Deployments (flows/deploy.py): the nightly sweep of the landing zone, and how often
    # the watcher looks; `landing` is a folder (relative to the workspace) or s3://bucket/prefix
    schedule_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    landing: str = "data/landing"
    watch_interval_seconds: int = 60
    # a JSON summary of every decision is POSTed here; "" = no webhook
    webhook_url: str = ""
    # the Prefect global concurrency limit (1 slot) that serialises promotions per registry
    # ("" = none: the flock on models/.promote.lock alone, enough when one host writes)
    promote_limit: str = "ratchet-promote"
    lock_timeout_seconds: int = 3600


@dataclass(frozen=True)
class Params:
    task: TaskConfig = field(default_factory=TaskConfig)
    ner: NerConfig = field(default_factory=NerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    remediation: RemediationConfig = field(default_factory=RemediationConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The registered task types by name: tasks/kinds/ `register` fills it (it is that
# package's KINDS), so `task.type` is checked against the plug-ins without this module
# importing them (they build on it). Empty until tasks.kinds is imported: no check then.
TASK_KINDS: dict[str, Any] = {}


_CHOICES = {
    ("task", "type"): TASK_KINDS,
    ("train", "precision"): {"auto", "fp32", "bf16"},
    ("train", "device"): {"auto", "cpu", "cuda"},
    ("train", "stats_head"): {"off", "alone", "auto"},
    ("replay", "strategy"): {"reservoir", "class_balanced", "slice_balanced"},
    ("replay", "pool"): {"buffer", "lineage"},
    ("validate", "on_bad_rows"): {"reject_batch", "drop_rows"},
    ("labels", "kl_action"): {"warn", "fail"},
    ("drift", "embedding_method"): {"model", "mmd", "distance"},
    ("retrain", "when"): {"always", "drift", "quality_drop", "drift_or_quality"},
}


def _coerce(value: Any, kind: type, key: str) -> Any:
    # bool is an int to Python; YAML's `yes` must not pass as 1 (nor 1 as a flag)
    if isinstance(value, bool) != (kind is bool):
        raise ConfigError(f"params: {key} must be {kind.__name__}, got {value!r}")
    if kind is float and isinstance(value, (int, str)):
        try:  # ints widen; YAML 1.1 reads `1e-4` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind):
        raise ConfigError(f"params: {key} must be {kind.__name__}, got {value!r}")
    return value


def _build_section(cls: type, raw: Any, section: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"params: section '{section}' must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"params: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}")
    values = {}
    for name, value in raw.items():
        key = f"{section}.{name}"
        kind = hints[name]
        if kind is tuple:  # remediation.ladder: a list of {section.key: value} mappings
            values[name] = _ladder(value, key)
            continue
        if isinstance(kind, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        value = _coerce(value, kind, key)
        allowed = _CHOICES.get((section, name))
        if allowed and value not in allowed:
            raise ConfigError(f"params: {key} must be one of {sorted(allowed)}, got {value!r}")
        if isinstance(value, (int, float)) and value < 0:
            raise ConfigError(f"params: {key} must not be negative, got {value!r}")
        values[name] = value
    return cls(**values)


def _ladder(value: Any, key: str) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(r, dict) for r in value):
        raise ConfigError(f"params: {key} must be a list of mappings of section.key: value")
    for i, rung in enumerate(value):
        bad = [k for k in rung if "." not in str(k) or str(k).startswith("remediation.")]
        if bad:
            raise ConfigError(f"params: {key}[{i}]: {', '.join(map(str, bad))} must look like section.key "
                              "(and not remediation.*)")
    return tuple(dict(r) for r in value)


def stats_head_on(params: Params) -> bool:
    """Whether the finetune stage learns class statistics instead of fine-tuning
    (`train.stats_head`: alone, or auto for a sentence classifier)."""
    mode = params.train.stats_head
    return mode == "alone" or (mode == "auto" and params.task.type == "classification")


def with_overrides(params: Params, overrides: dict[str, Any], where: str = "overrides") -> Params:
    """`params` with dotted overrides applied, validated like params.yaml; errors name `where`."""
    try:
        return params_from_dict(_apply(params.to_dict(), overrides), _check_ladder=False)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def attempt_params(params: Params, attempt: int) -> Params:
    """The params of remediation attempt `attempt` (0 = the plain params)."""
    if attempt == 0:
        return params
    return with_overrides(params, params.remediation.ladder[attempt - 1], f"remediation.ladder[{attempt - 1}]")


def params_from_dict(raw: dict[str, Any] | None, _check_ladder: bool = True) -> Params:
    """Build validated `Params` from a parsed params.yaml mapping."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("params: the top level must be a mapping of sections")
    sections = {f.name: f for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"params: unknown section(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(Params)
    built = {name: _build_section(hints[name], raw.get(name), name) for name in sections}
    params = Params(**built)
    if params.train.batch_size < 1 or params.train.epochs < 1 or params.train.processes < 1:
        raise ConfigError("params: train.batch_size, train.epochs and train.processes must be at least 1")
    if not 0 <= params.train.dev_share < 1 or params.train.distill_temperature <= 0:
        raise ConfigError("params: train.dev_share must be in [0, 1) and train.distill_temperature above 0")
    if params.train.rebalance_head_epochs and params.task.type == "ner":
        raise ConfigError("params: train.rebalance_head_epochs does not apply to task.type ner: a tagger's rows "
                          "are sentences, whose tags cannot be balanced by choosing sentences (O dominates)")
    if params.train.stats_head == "alone" and params.task.type == "ner":
        raise ConfigError("params: train.stats_head does not apply to task.type ner: a tag depends on the words "
                          "around it and O dominates every sentence; the class-statistics head is built on one "
                          "sentence vector per row (the tagger fine-tunes; `auto` picks that)")
    if params.train.stats_features < 1 or params.train.stats_bandwidth <= 0 \
            or not 0 <= params.train.stats_shrinkage <= 1:
        raise ConfigError("params: train.stats_features must be at least 1, train.stats_bandwidth above 0 and "
                          "train.stats_shrinkage in [0, 1]")
    if not 0 <= params.gate.max_new_label_confusion <= 1:
        raise ConfigError("params: gate.max_new_label_confusion must be in [0, 1] (0 = the strict floor)")
    if params.replay.capacity < 0:
        raise ConfigError("params: replay.capacity must not be negative")
    try:
        codecs.lookup(params.validate.encoding)
    except LookupError:
        raise ConfigError(f"params: validate.encoding: unknown encoding {params.validate.encoding!r}") from None
    mirror = params.registry.mirror
    if mirror and not (mirror.startswith("s3://") and mirror[len("s3://"):].strip("/")):
        raise ConfigError(f"params: registry.mirror must be an s3://bucket/prefix URI, got {mirror!r}")
    dask = params.evaluate.dask
    if dask not in ("", "local") and "://" not in dask or params.evaluate.dask_workers < 1:
        raise ConfigError(f"params: evaluate.dask must be '', 'local' or a scheduler address like tcp://host:8786 "
                          f"(got {dask!r}), and evaluate.dask_workers at least 1")
    if params.remediation.max_attempts < 1:
        raise ConfigError("params: remediation.max_attempts must be at least 1")
    if _check_ladder:  # every rung must build valid params now, not at the first rejection
        for attempt in range(1, len(params.remediation.ladder) + 1):
            attempt_params(params, attempt)
    return params


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (or defaults when absent) and apply dotted overrides like
    {"train.epochs": 1}."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"params: {path} is not valid YAML: {exc}") from exc
    return params_from_dict(_apply(raw, overrides or {}))


def _apply(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A params mapping with dotted overrides like {"train.epochs": 1} applied."""
    for dotted, value in overrides.items():
        section, _, key = str(dotted).partition(".")
        if not key:
            raise ConfigError(f"params: override '{dotted}' must look like section.key")
        raw.setdefault(section, {})
        raw[section] = {**(raw[section] or {}), key: value}
    return raw


def params_hash(params: Params) -> str:
    """A short stable hash of the effective parameters, recorded in lineage."""
    raw = params.to_dict()
    for name, default in (("task", TaskConfig()), ("ner", NerConfig())):
        if getattr(params, name) == default:  # hashes of runs from before these sections stay the same
            raw.pop(name)
    if params.evaluate.reuse_answers:  # the default, and no result depends on it: old hashes stay
        raw["evaluate"].pop("reuse_answers")
    blob = json.dumps(raw, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
