"""Overhead benchmark: share arithmetic and the big-batch stage timings on a small batch."""

from __future__ import annotations

import pytest

from benchmarks.overhead import stage_timings, summarize, synthetic_batch


def test_summarize_splits_the_wall_time():
    stages = {"intake": 1.0, "validate": 2.0, "drift": 3.0, "finetune": 80.0, "evaluate": 6.0, "gate": 1.0,
              "promote": 2.0}
    out = summarize(100.0, stages, bare_s=78.0, warmup_s=30.0, rows=1500, status="promoted", samples=12000)
    assert out["overhead_share"] == pytest.approx(0.22)
    assert out["overhead_share_without_evaluation"] == pytest.approx(0.15)
    assert out["stage_share"]["orchestration"] == pytest.approx(0.05)   # 100 - 95 in no task
    assert sum(out["stage_share"].values()) == pytest.approx(1.0)


def test_synthetic_batches_have_distinct_rows():
    frame = synthetic_batch(300)
    assert len(frame) == 300 and frame["text"].is_unique
    assert set(frame.columns) == {"text", "label", "slice"}


@pytest.mark.slow  # Great Expectations and Evidently on a 5,000-row reference: tens of seconds
def test_stage_timings_run_the_real_validation_and_drift(repo, tmp_path):
    [row] = stage_timings([200], repo / "params.yaml", tmp_path)
    assert row["rows"] == 200 and row["validation_passed"] is True
    assert (tmp_path / "drift-200" / "drift.json").exists()
    assert min(row["intake_s"], row["validate_s"], row["drift_s"]) >= 0


def test_the_bare_loop_takes_the_trainers_steps_on_the_same_rows(tmp_path, one_torch_thread):
    """trainer_vs_bare compares like with like: the same rows, steps and samples (early
    stopping off), both loops learn, and the ratio is the two rates'."""
    from conftest import TINY_PARAMS, toy_frame

    from benchmarks.overhead import trainer_vs_bare
    from tasks.core.config import load_params

    (tmp_path / "params.yaml").write_text(TINY_PARAMS)
    params = load_params(tmp_path / "params.yaml", {"train.epochs": 3, "train.min_steps": 0,
                                                     "train.early_stopping_patience": 0,
                                                     "train.checkpoint_every": 2})
    rows = toy_frame(["weather", "music"], per_label=24, seed=3)
    out = trainer_vs_bare(None, rows[["text", "label"]], rows[["text", "label"]].head(8), params, tmp_path)
    bare, trainer = out["bare"], out["trainer"]
    assert (bare["steps"], bare["samples"]) == (trainer["steps"], trainer["samples"]) == (9, 144)
    assert out["ratio"] == pytest.approx(trainer["samples_per_s"] / bare["samples_per_s"], rel=1e-3)
    assert trainer["checkpoint_s"] > 0 and trainer["dev_loss_s"] > 0  # 4 checkpoints, 3 dev losses
    assert trainer["samples_per_s_steps_only"] >= trainer["samples_per_s"]
    assert not (tmp_path / "trainer.run").exists()


def test_the_ner_path_delivers_conll_sentences_as_jsonl(tmp_path):
    """--path ner: a first delivery of NER_FIRST sentences, then enough for 1,500 training
    sentences a unit after the held-out share, each a JSONL delivery the tagger parses."""
    from benchmarks.overhead import NER_FIRST, conll_deliveries
    from benchmarks.streams import SHARED_DATA
    from tasks.ner.conll import parse_ner_bytes

    if not (SHARED_DATA / "conll2003" / "train.txt").exists():
        pytest.skip(f"CoNLL-2003 is not at {SHARED_DATA / 'conll2003'} (not redistributable)")
    first, second = conll_deliveries(tmp_path, 1, test_share=0.2)
    parsed = [parse_ner_bytes(p.read_bytes(), p.name, "utf-8") for p in (first, second)]
    assert [len(f) for f in parsed] == [NER_FIRST, 1875]
    assert {"tokens", "tags"} <= set(parsed[1].columns)
