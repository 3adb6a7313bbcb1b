"""README benchmark section: generated from results JSON, replaced in place between markers."""

from __future__ import annotations

import json

from benchmarks.report import END, START, section, shipped_strategy, update_readme


def _strategy(acc, samples, bwt=-0.01, promotions=3, rejections=0):
    return {"acc": acc, "bwt": bwt, "max_forgetting": 0.02, "matrix": [[acc]], "samples": samples,
            "wall_s": 10.0, "samples_per_s": 100.0, "peak_mem_mb": 900.0, "promotions": promotions,
            "rejections": rejections}


def _write_results(folder):
    doc = {"stream": "clinc150", "scale": "small", "date": "2026-11-29T00:00:00+00:00", "command": "python -m x",
           "machine": {"cpus": 2, "torch": "2.13.0+cpu", "load_avg_1m_at_start": 1.0, "load_avg_1m_at_end": 1.2},
           "strategies": {"naive": _strategy(0.2, 1000, bwt=-0.6, promotions=1, rejections=2),
                          "replay@5%": _strategy(0.9, 2000), "joint": _strategy(0.95, 1000),
                          "retrain_each": {**_strategy(None, 10000), "bwt": None, "promotions": None,
                                           "rejections": None}},
           "skipped": {"replay+distill": "no train.distill_weight"}}
    (folder / "continual_clinc150_small.json").write_text(json.dumps(doc))
    (folder / "continual_fpb_small.json").write_text(json.dumps(
        {"stream": "fpb", "scale": "small", "strategies": {}, "skipped_stream": "not found at /x"}))


def test_section_reports_targets_tables_and_skips(tmp_path):
    _write_results(tmp_path)
    text = section(tmp_path, "small")
    assert text.startswith(START) and text.endswith(END)
    assert "| CLINC150: replay (defaults, 5% buffer) ACC ≥ 97% of joint | 94.7% | no |" in text
    assert "| … using ≤ 30% of retrain_each's samples | 20.0% | yes |" in text
    assert "| replay@5% | 90.0% | 95% | -1.0 pts |" in text
    assert "replay+distill | skipped: no train.distill_weight" in text
    assert "**fpb**: skipped — not found at /x" in text


def test_update_readme_replaces_only_its_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n")
    update_readme(readme, f"{START}\nold\n{END}")
    update_readme(readme, f"{START}\nnew\n{END}")
    body = readme.read_text()
    assert body.startswith("# Title\n\nintro\n") and "new" in body and "old" not in body
    assert body.count(START) == 1


def test_each_scale_has_its_own_section(tmp_path):
    from benchmarks.report import markers

    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    update_readme(readme, f"{START}\nsmall\n{END}")
    full_start, full_end = markers("full")
    for text in ("full old", "full new"):
        update_readme(readme, f"{full_start}\n{text}\n{full_end}", "full")
    body = readme.read_text()
    assert "small" in body and "full new" in body and "full old" not in body
    assert body.count(full_start) == 1 and body.count(START) == 1


def test_the_overhead_targets_are_reported_by_size(tmp_path):
    from benchmarks.report import overhead_targets

    run = {"overhead_share": 0.025, "overhead_share_without_evaluation": 0.01}
    rows = overhead_targets({"by_size": {"1500": run, "13500": {**run, "overhead_share": 0.02}},
                             "trainer_vs_bare": {"ratio": 0.93, "ratio_steps_only": 0.99}})
    assert rows[0].endswith("| 2.5% (without evaluation 1.0%) | yes |")
    assert rows[1].startswith("| platform overhead ≤ 1% of the bare fine-tune, 13,500-row delivery") and rows[1].endswith("| no |")
    assert rows[2] == "| trainer ≥ 95% of a bare PyTorch loop's samples/s | 93.0% (99.0% without its dev loss and checkpoints) | no |"


def test_the_learning_targets_judge_the_shipped_defaults_against_joint_and_naive(tmp_path):
    """Issue 19: what params.yaml ships, gate enforced (`stats+gate`), ≥ 99% of joint, BWT ≥ −1 pt,
    ≤ 1.5× naive's samples; a forward pass counts as a sample."""
    assert shipped_strategy() == "stats+gate"  # params.yaml: train.stats_head auto
    doc = {"stream": "banking77", "scale": "full", "date": "2026-12-07T00:00:00+00:00", "command": "python -m x",
           "machine": {"cpus": 2}, "strategies": {"naive": _strategy(0.3, 1000, bwt=-0.5),
                                                  "stats+gate": _strategy(0.945, 1500, bwt=-0.012),
                                                  "replay": _strategy(0.2, 100),
                                                  "joint": _strategy(0.95, 1000)}}
    (tmp_path / "continual_banking77_full.json").write_text(json.dumps(doc))
    text = section(tmp_path, "full")
    assert "| banking77: shipped defaults (`stats+gate`) ACC ≥ 99% of joint | 99.5% (94.5% vs 95.0%) | yes |" in text
    assert "| … BWT ≥ −1 pt | -1.2 pts | no |" in text
    assert "| … training samples ≤ 1.5× naive's | 1.50× (1,500 vs 1,000) | yes |" in text


def test_the_statistics_path_gets_its_own_overhead_table(tmp_path):
    from benchmarks.report import stats_overhead

    run = {"flow_wall_s": 20.0, "bare_train_s": 5.0, "stage_s": {"intake": 0.1, "validate": 0.4, "split": 0.0,
                                                                 "drift": 4.0, "evaluate": 3.0, "finetune": 6.0,
                                                                 "gate": 0.5, "promote": 1.5},
           "stage_share": {"orchestration": 0.05}}
    lines = stats_overhead({"date": "d", "machine": {"cpu": "x", "autocast": "fp32"}, "command": "c",
                            "by_size": {"1500": run}})
    assert lines[-2] == "| 1,500 | 20.0 | 5.0 | 0.5 | 4.0 | 3.0 | 0.5 | 1.5 | 1.0 |"
    assert lines[0].startswith("The class-statistics path (d; x, fp32)") and "bare s (forward passes)" in lines[2]
    ner = stats_overhead({"date": "d", "machine": {"cpu": "x", "autocast": "fp32"}, "command": "c", "path": "ner",
                          "by_size": {"1500": run}})
    assert ner[0].startswith("The NER path") and "bare s (fine-tune)" in ner[2]


def test_the_stored_drift_reference_is_reported_against_recomputing_it():
    from benchmarks.report import drift_reference

    [line, _] = drift_reference({"date": "d", "machine": {"cpu": "x", "autocast": "fp32"}, "command": "c",
                                 "batch_rows": 1950, "max_embed_rows": 400,
                                 "seconds": {"stored": [3.0, 3.1], "computed": [4.4, 4.5]},
                                 "median_s": {"computed": 4.4, "stored": 3.08, "store_at_promotion": 1.29}})
    assert "4.40 s embedding the 400-row reference sample, 3.08 s reading it (30% less)" in line
