"""Which strategies a benchmark runs, as params.yaml overrides of Ratchet's own settings.

A strategy is not new training code: it is a set of dotted overrides (`replay.capacity`,
`train.distill_weight`, ...) loaded through `tasks.core.config.load_params`, so a key that the
fine-tuning engine does not have is caught by the same validation the flow uses, and a
strategy that needs a missing key is skipped with that reason instead of faked.

Every strategy but the `+gate` ones runs with the gate **advisory**: the gate judges each
candidate and its verdict is counted (`promotions` / `rejections`), but the chain always
advances, so ACC measures what the learning method keeps, not how often the gate held
production back. (Enforced, naive stays on batch 1 and hides the forgetting it exists to
show; with 10 held-out rows per intent the gate cannot rule out small drops and holds
back good candidates too.) `replay+gate` is the fine-tuning path end to end: the flow's
gate, enforced, decides which model the next batch starts from. The shipped default for a
sentence classifier is the statistics head (`train.stats_head: auto`): `stats+gate`.

- `naive`: no replay (and no distillation): the lower bound.
- `replay`: Ratchet's fine-tuning defaults from params.yaml (`train.stats_head: off`, as
  in every fine-tuning strategy: `auto` would learn a sentence classifier as statistics).
- `replay+gate`: the fine-tuning defaults with the gate enforced, as in the flow.
- `replay@P%`: the defaults with a buffer of P% of the stream's training rows.
- `reservoir@5%`: plain reservoir selection, 5% buffer, no distillation: the baseline
  the defaults must beat.
- `class_balanced@5%`: the defaults with class-balanced selection and a 5% buffer,
  when the replay module has it.
- `replay+distill`: the defaults with distillation on replayed rows, when the engine
  has `train.distill_weight`.
- `stop28_defaults`: the defaults before the update methods (replay 1:1, one learning
  rate, no head method, fine-tuning), spelled out; `finetune+gate` is it with the gate
  enforced. Every fine-tuning strategy sets `train.stats_head: off`.
- `budget`: replay at `replay.ratio: 0.5`, no update method: 1.5x naive's samples, the
  cost target of issue 19; the update methods below all run at this budget and spell out
  every method key, so their meaning does not move when params.yaml's defaults do.
- `slow_encoder`: `budget` with the encoder at a quarter of the head's learning rate once
  the model has been promoted (SLCA-style).
- `ace`: `budget` plus ER-ACE masking of old labels absent from a batch's new rows.
- `ace+frozen_head`: ... plus the champion's head rows kept exactly.
- `ace+wa`: ... plus weight aligning of the new head rows (WA).
- `budget+distill`: `budget` plus LwF distillation on the replayed rows (weight 1).
- `rebalance`, `ace+rebalance`: `budget` / `ace` plus classifier re-balancing (5 epochs of
  the head alone on a class-balanced subset of the rows).
- `stats`: the class-statistics head alone (`train.stats_head: alone`): the base encoder
  frozen, closed-form LDA over random Fourier features of its sentence vectors, from
  per-label sums kept with the version; no optimizer step (its rows are run forward
  once: `forward_rows`); `stats+gate` is it with the gate enforced.
- `joint`: one fine-tune from the base model on every training row of the stream.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.config import ConfigError, Params, TrainConfig, load_params

DISTILL_KEY = "distill_weight"
DEFAULT_DISTILL = 1.0


@dataclass(frozen=True)
class Strategy:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    gate: str = "advisory"         # advisory (verdicts counted, chain advances) | enforce
    joint: bool = False
    note: str = ""


@dataclass(frozen=True)
class Plan:
    strategies: list[Strategy]
    params: dict[str, Params]      # effective params per strategy name
    skipped: dict[str, str]        # strategy name -> why it was not run
    same_as: dict[str, str]        # strategy name -> earlier strategy with identical settings


def has_train_key(key: str) -> bool:
    return key in {f.name for f in dataclasses.fields(TrainConfig)}


def candidates(defaults: Params, total_train: int, sweep: list[float]) -> tuple[list[Strategy], dict[str, str]]:
    """All strategies wanted for a stream with `total_train` training rows."""
    distill = has_train_key(DISTILL_KEY)
    no_distill = {f"train.{DISTILL_KEY}": 0.0} if distill else {}
    # every fine-tuning strategy says so: params.yaml's `train.stats_head: auto` learns a
    # sentence classifier as class statistics instead (the `stats` strategy)
    tune = {"train.stats_head": "off"}
    out = [Strategy("naive", {"replay.capacity": 0, "replay.ratio": 0.0, **no_distill, **tune},
                    note="no replay"),
           Strategy("replay", dict(tune), note="Ratchet's fine-tuning defaults (params.yaml, stats_head off)"),
           Strategy("replay+gate", dict(tune), gate="enforce",
                    note="the fine-tuning defaults, gate enforced: a rejected candidate is discarded, as in the flow")]
    for pct in sweep:
        out.append(Strategy(f"replay@{pct:g}%", {"replay.capacity": max(1, math.ceil(pct / 100 * total_train)), **tune},
                            note=f"defaults, buffer {pct:g}% of the stream's training rows"))
    out.append(Strategy("reservoir@5%", {"replay.strategy": "reservoir",
                                         "replay.capacity": max(1, math.ceil(0.05 * total_train)), **no_distill,
                                         **tune},
                        note="plain reservoir, 5% buffer, no distillation"))
    skipped = {}
    # skipped by plan() with the config error when the replay module lacks it
    out.append(Strategy("class_balanced@5%", {"replay.strategy": "class_balanced",
                                              "replay.capacity": max(1, math.ceil(0.05 * total_train)), **tune},
                        note="defaults with class-balanced selection, 5% buffer"))
    if distill:
        weight = getattr(defaults.train, DISTILL_KEY) or DEFAULT_DISTILL
        out.append(Strategy("replay+distill", {f"train.{DISTILL_KEY}": weight, **tune},
                            note=f"defaults plus distillation on replayed rows (weight {weight:g})"))
    else:
        skipped["replay+distill"] = f"the fine-tuning engine has no train.{DISTILL_KEY} (tasks/core/config.py TrainConfig)"
    # the update methods, each spelled out in full so its meaning does not move with params.yaml
    off = {"train.encoder_lr_scale": 1.0, "train.mask_absent_old": False, "train.freeze_old_head": False,
           "train.align_new_head": False, "train.rebalance_head_epochs": 0, f"train.{DISTILL_KEY}": 0.0,
           **tune} if distill else dict(tune)
    budget = {**off, "replay.ratio": 0.5}
    ace = {**budget, "train.mask_absent_old": True}
    out += [Strategy("stop28_defaults", {**off, "replay.ratio": 1.0},
                     note="the defaults before the update methods: replay 1:1, plain optimizer"),
            Strategy("budget", budget, note="replay at half a new row per new row: 1.5x naive's samples"),
            Strategy("slow_encoder", {**budget, "train.encoder_lr_scale": 0.25},
                     note="budget, encoder at 0.25x the learning rate once promoted"),
            Strategy("ace", ace, note="budget plus ER-ACE masking of old labels absent from a batch's new rows"),
            Strategy("ace+frozen_head", {**ace, "train.freeze_old_head": True},
                     note="ace plus the champion's head rows kept exactly"),
            Strategy("ace+wa", {**ace, "train.align_new_head": True},
                     note="ace plus weight aligning of the new head rows"),
            Strategy("budget+distill", {**budget, f"train.{DISTILL_KEY}": DEFAULT_DISTILL} if distill else budget,
                     note="budget plus distillation from the champion on the replayed rows"),
            Strategy("rebalance", {**budget, "train.rebalance_head_epochs": 5},
                     note="budget plus 5 epochs of the head alone on a class-balanced subset"),
            Strategy("ace+rebalance", {**ace, "train.rebalance_head_epochs": 5},
                     note="ace plus 5 epochs of the head alone on a class-balanced subset")]
    stats = {**off, "replay.ratio": 0.0, "train.stats_head": "alone"}
    out.append(Strategy("stats", stats,
                        note="class-statistics head alone: LDA over random features of the frozen encoder, no fine-tuning"))
    out.append(Strategy("stats+gate", stats, gate="enforce", note="stats with the gate enforced, as in the flow"))
    out.append(Strategy("finetune+gate", {**off, "replay.ratio": 1.0}, gate="enforce",
                        note="stop28_defaults with the gate enforced: replay fine-tuning end to end"))
    out.append(Strategy("joint", {"replay.capacity": 0, "replay.ratio": 0.0, **no_distill, **tune}, joint=True,
                        note="one fine-tune from the base model on all training rows"))
    return out, skipped


def plan(params_path: Path, base_overrides: dict[str, Any], total_train: int, sweep: list[float],
         wanted: list[str] | None = None) -> Plan:
    """Resolve every strategy's params; drop unwanted ones, invalid ones (with the config
    error as the reason) and exact duplicates of an earlier strategy."""
    defaults = load_params(params_path, base_overrides)
    strategies, skipped = candidates(defaults, total_train, sweep)
    chosen, params, same_as, seen = [], {}, {}, {}
    for s in strategies:
        if wanted is not None and s.name not in wanted:
            continue
        try:
            p = load_params(params_path, {**base_overrides, **s.overrides})
        except ConfigError as exc:
            skipped[s.name] = f"not supported by this version's params: {exc}"
            continue
        key = (repr(p.to_dict()), s.gate, s.joint)
        if key in seen:
            same_as[s.name] = seen[key]
            continue
        seen[key] = s.name
        chosen.append(s)
        params[s.name] = p
    if wanted is not None:
        skipped = {k: v for k, v in skipped.items() if k in wanted}
    return Plan(chosen, params, skipped, same_as)
