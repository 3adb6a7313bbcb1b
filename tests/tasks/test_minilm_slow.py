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
    from tasks.config import params_from_dict
    from tasks.evaluate import evaluate
    from tasks.finetune import train_candidate
    from tasks.model import load_classifier

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
