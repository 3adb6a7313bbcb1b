"""Slow tier: the real all-MiniLM-L6-v2 (packaged, offline) learns a real CLINC150 domain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.stream import clinc150_frame

pytestmark = pytest.mark.slow


def test_minilm_learns_one_clinc_domain_far_above_chance(tmp_path):
    from tasks.core.config import params_from_dict
    from tasks.judge.evaluate import evaluate
    from tasks.train.finetune import train_candidate
    from tasks.train.model import load_classifier

    frame = clinc150_frame("banking", per_intent=30)
    frame["batch_id"] = "b"
    params = params_from_dict({"model": {"base": "minilm"}, "train": {"epochs": 3, "lr": 1e-4}})
    train = frame[frame.split == "train"]
    candidate = train_candidate(champion_dir=None, train_rows=train, out_dir=tmp_path / "c", params=params)
    assert candidate.train.losses[-1] < candidate.train.losses[0]
    test = frame[frame.split == "test"]
    sheet = evaluate(load_classifier(candidate.path), test, "b", batch_size=128, max_length=64)
    # 15 intents: chance is 6.7%
    assert sheet["new"]["overall"]["accuracy"] > 0.6, sheet["new"]["overall"]


def test_console_script_promotes_a_real_model_loadable_without_ratchet(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    batch = tmp_path / "banking.csv"
    clinc150_frame("banking", per_intent=20).to_csv(batch, index=False)
    ratchet = Path(sys.executable).parent / "ratchet"
    done = subprocess.run([str(ratchet), "retrain", "--batch", str(batch), "--workspace", str(ws),
                           "--set", "train.epochs=3"], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    probe = ("from transformers import pipeline; import sys; "
             "assert 'tasks' not in sys.modules and 'flows' not in sys.modules; "
             f"print(pipeline('text-classification', model={str(ws / 'models' / 'production')!r})"
             "('what is my account balance')[0]['label'])")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stdout.strip() in set(clinc150_frame("banking")["label"])


@pytest.mark.usefixtures("one_torch_thread")  # a contended OpenMP pool is far slower than one thread
def test_replay_keeps_earlier_clinc_domains_naive_finetuning_forgets(tmp_path):
    """Three CLINC150 domains in a row through `train_candidate`, from one shared first
    model: with reservoir replay the earlier domains' average accuracy stays within a
    few points of where it was; with replay off (ratio 0) it collapses."""
    import json
    import time

    from tasks.core.config import params_from_dict
    from tasks.judge.evaluate import evaluate
    from tasks.train.finetune import train_candidate
    from tasks.train.model import load_classifier

    domains = ["banking", "credit_cards", "kitchen_and_dining"]
    frames = {d: clinc150_frame(d, per_intent=20).assign(batch_id=d) for d in domains}
    train = {"epochs": 3, "lr": 1e-4, "seed": 13, "checkpoint_every": 0}

    def params(ratio: float):
        return params_from_dict({"model": {"base": "minilm"}, "replay": {"ratio": ratio}, "train": train})

    def accuracy(path, domain: str) -> float:
        test = frames[domain][frames[domain].split == "test"]
        sheet = evaluate(load_classifier(path), test, domain, batch_size=128, max_length=64)
        return sheet["new"]["overall"]["accuracy"]

    started = time.perf_counter()
    first = train_candidate(champion_dir=None, train_rows=frames[domains[0]].query("split == 'train'"),
                            out_dir=tmp_path / "d1", params=params(1.0))
    second_alone = None
    results = {"start": {domains[0]: accuracy(first.path, domains[0])}}
    for name, ratio in (("replay", 1.0), ("naive", 0.0)):
        champion = first.path
        for i, domain in enumerate(domains[1:], start=2):
            champion = train_candidate(champion_dir=champion, train_rows=frames[domain].query("split == 'train'"),
                                       out_dir=tmp_path / f"{name}{i}", params=params(ratio)).path
            if i == 2 and second_alone is None:
                second_alone = accuracy(champion, domain)
        results[name] = {d: accuracy(champion, d) for d in domains}
    before = (results["start"][domains[0]] + second_alone) / 2
    old = {name: (results[name][domains[0]] + results[name][domains[1]]) / 2 for name in ("replay", "naive")}
    print(json.dumps({"accuracy": results, "old_domains_avg_before": before, "old_domains_avg_after": old,
                      "seconds": round(time.perf_counter() - started)}, indent=2))
    assert old["replay"] >= before - 0.05, (before, old)
    assert old["naive"] <= before - 0.3, (before, old)
    assert min(results[name][domains[2]] for name in ("replay", "naive")) > 0.6  # both learn the new domain
