"""Continual benchmark: metrics on hand-made matrices, the strategy plan, and the harness
end to end on a tiny keyword stream with the tiny model (JSON shape, counts, plots)."""

from __future__ import annotations

import json

import pytest

from benchmarks.continual import main, retrain_each, run_stream
from benchmarks.metrics import seen_acc_curve, stream_scores
from benchmarks.strategies import has_train_key, plan
from benchmarks.streams import Caps, make_batch

STRATEGY_KEYS = {"acc", "bwt", "max_forgetting", "matrix", "samples", "forward_rows", "wall_s", "samples_per_s", "peak_mem_mb",
                 "promotions", "rejections"}
EPOCHS = 12
TOY_LABELS = [["weather", "music"], ["food", "travel"], ["bank", "sport"]]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- metrics --------------------------------------------------------------------------

def test_scores_on_a_hand_made_matrix():
    r = [[0.9, 0.0, 0.0],
         [0.7, 0.8, 0.1],
         [0.6, 0.6, 0.9]]
    s = stream_scores(r)
    assert s.acc == pytest.approx((0.6 + 0.6 + 0.9) / 3, abs=1e-4)
    assert s.bwt == pytest.approx(((0.6 - 0.9) + (0.6 - 0.8)) / 2, abs=1e-4)
    assert s.max_forgetting == pytest.approx(0.3, abs=1e-4)   # batch 0: 0.9 -> 0.6


def test_forgetting_counts_from_the_best_point_not_the_diagonal():
    # batch 0 improved after batch 1 (0.5 -> 0.9), then fell to 0.4: BWT sees -0.1,
    # forgetting sees the 0.5 that was lost
    s = stream_scores([[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.4, 0.8, 0.7]])
    assert s.bwt == pytest.approx(((0.4 - 0.5) + (0.8 - 0.8)) / 2, abs=1e-4)
    assert s.max_forgetting == pytest.approx(0.5, abs=1e-4)
    assert seen_acc_curve([[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.4, 0.8, 0.7]]) == [0.5, 0.85, 0.6333]


def test_single_batch_has_nothing_to_forget_and_bad_shapes_fail():
    assert stream_scores([[0.7]]).bwt is None and stream_scores([[0.7]]).max_forgetting is None
    with pytest.raises(ValueError, match="square"):
        stream_scores([[0.1, 0.2]])


# --- plan ------------------------------------------------------------------------------

def test_plan_resolves_strategies_through_params(workspace):
    p = plan(workspace / "params.yaml", {}, total_train=1000, sweep=[1, 5])
    names = [s.name for s in p.strategies]
    assert names[:3] == ["naive", "replay", "replay+gate"] and "joint" in names
    # only the +gate strategies enforce the gate; the others count its verdicts and advance
    assert {s.name for s in p.strategies if s.gate == "enforce"} == {"replay+gate", "stats+gate"}
    assert p.params["replay@1%"].replay.capacity == 10
    assert p.params["naive"].replay.ratio == 0.0
    # default strategy is reservoir: the 5% sweep point and the baseline are one setting;
    # stop28_defaults (and finetune+gate) spell out what are still this workspace's defaults
    assert p.same_as == {"reservoir@5%": "replay@5%", "stop28_defaults": "replay", "finetune+gate": "replay+gate"}
    # the update methods spell out every method key, whatever params.yaml says
    assert p.params["ace"].train.mask_absent_old and p.params["ace"].replay.ratio == 0.5
    assert not p.params["budget"].train.mask_absent_old and p.params["budget"].train.encoder_lr_scale == 1.0
    assert p.params["stats"].train.stats_head == "alone" and p.params["replay"].train.stats_head == "off"
    assert all(p.params[name].train.stats_head == "off" for name in ("naive", "joint", "budget"))
    if not has_train_key("distill_weight"):
        assert "distill_weight" in p.skipped["replay+distill"]


def test_plan_skips_a_strategy_whose_params_do_not_validate(workspace):
    p = plan(workspace / "params.yaml", {}, total_train=100, sweep=[], wanted=["naive", "replay", "nope"])
    assert [s.name for s in p.strategies] == ["naive", "replay"]


# --- harness end to end ----------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_stream():
    from conftest import toy_frame

    return [make_batch(f"{i:02d}_toy", toy_frame(labels, per_label=16, seed=i, slice_name=f"{i:02d}_toy"), Caps())
            for i, labels in enumerate(TOY_LABELS, start=1)]


@pytest.fixture(scope="module")
def doc(toy_stream, tmp_path_factory):
    from conftest import TINY_PARAMS

    root = tmp_path_factory.mktemp("bench")
    (root / "params.yaml").write_text(TINY_PARAMS)
    return run_stream("toy", toy_stream, scale="tiny", params_path=root / "params.yaml",
                      overrides={"train.epochs": EPOCHS, "train.batch_size": 8}, wanted=["naive", "replay", "replay@20%", "joint"], sweep=[20.0], isolate=False,
                      workdir=root, command="pytest")


def test_results_have_the_issue_shape(doc, toy_stream):
    assert {"stream", "scale", "date", "machine", "command", "strategies"} <= set(doc)
    json.dumps(doc)  # serialisable as written
    t = len(toy_stream)
    for name, res in doc["strategies"].items():
        assert set(res) == STRATEGY_KEYS, name
        if name in ("joint", "retrain_each"):
            continue
        assert len(res["matrix"]) == t and all(len(row) == t for row in res["matrix"])
        assert all(0.0 <= a <= 1.0 for row in res["matrix"] for a in row)
        assert res["promotions"] + res["rejections"] == t
        assert res["acc"] == stream_scores(res["matrix"]).acc
    assert {"naive", "replay", "replay@20%", "joint", "retrain_each"} <= set(doc["strategies"])
    assert len(doc["strategies"]["joint"]["matrix"]) == 1


def test_samples_and_cost_are_counted_from_rows(doc, toy_stream):
    epochs = EPOCHS
    sizes = [len(b.train) for b in toy_stream]
    naive = doc["strategies"]["naive"]
    assert naive["samples"] == sum(sizes) * epochs                 # no replay rows at all
    assert doc["strategies"]["joint"]["samples"] == sum(sizes) * epochs
    replay = doc["details"]["replay"]["batches"]
    assert doc["strategies"]["replay"]["samples"] == sum(b["train_samples"] for b in replay)
    assert sum(b["replay_rows"] for b in replay) > 0               # later batches rehearse earlier ones
    cost = retrain_each(toy_stream, epochs, None)
    assert cost["samples"] == (sizes[0] + (sizes[0] + sizes[1]) + sum(sizes)) * epochs
    assert doc["strategies"]["retrain_each"]["samples"] == cost["samples"]


def test_the_tiny_model_learns_and_naive_forgets(doc):
    naive, joint = doc["strategies"]["naive"], doc["strategies"]["joint"]
    # the first batch is learned when it arrives, and the naive chain (gate advisory)
    # loses it once later batches are learned without replay
    assert naive["matrix"][0][0] >= 0.9
    assert naive["max_forgetting"] > 0.3 and naive["bwt"] < 0
    assert joint["acc"] > naive["acc"]


def test_plots_are_written(doc, tmp_path):
    from benchmarks.plots import plot_results

    paths = plot_results(doc, tmp_path / "toy")
    assert [p.name for p in paths] == ["toy_acc.png", "toy_cost.png", "toy_matrix.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_cli_writes_json_with_its_command(tmp_path):
    argv = ["--stream", "clinc150", "--caps", "3,1,2", "--batches", "2", "--strategies", "naive,joint",
            "--set", "model.base=tiny", "--set", "train.epochs=1", "--out", str(tmp_path), "--no-isolate",
            "--no-plots"]
    [path] = main(argv)
    doc = json.loads(path.read_text())
    assert path.name == "continual_clinc150_small.json"
    assert doc["command"].startswith("python -m benchmarks.continual --stream clinc150")
    assert set(doc["strategies"]) == {"naive", "joint", "retrain_each"}
    assert [b["train"] for b in doc["stream_info"]["batches"]] == [45, 45]


def test_merge_lays_a_later_strategy_over_an_earlier_result(tmp_path):
    """A strategy run later (another session, another machine) joins the stream's JSON with
    its own provenance; the earlier strategies and joint's cost estimate stay."""
    base = ["--stream", "clinc150", "--caps", "3,1,2", "--batches", "2", "--set", "model.base=tiny",
            "--set", "train.epochs=1", "--no-isolate", "--no-plots"]
    [first] = main([*base, "--strategies", "naive,joint", "--out", str(tmp_path / "a")])
    [merged] = main([*base, "--strategies", "replay", "--out", str(tmp_path / "b"), "--merge", str(first)])
    earlier, doc = json.loads(first.read_text()), json.loads(merged.read_text())
    assert list(doc["strategies"]) == ["naive", "joint", "retrain_each", "replay"]
    assert doc["strategies"]["retrain_each"] == earlier["strategies"]["retrain_each"]
    assert doc["details"]["naive"]["run"]["date"] == earlier["date"]
    assert "--strategies replay" in doc["details"]["replay"]["run"]["command"]
    other = {**earlier, "stream_info": {**earlier["stream_info"], "fingerprint": "0"}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="rows differ"):
        main([*base, "--strategies", "replay", "--out", str(tmp_path / "c"), "--merge", str(tmp_path / "other.json")])


def test_two_strategies_at_a_time_in_their_own_processes(tmp_path):
    argv = ["--stream", "clinc150", "--caps", "3,1,2", "--batches", "2", "--strategies", "joint,naive",
            "--set", "model.base=tiny", "--set", "train.epochs=1", "--out", str(tmp_path), "--jobs", "2",
            "--no-plots"]
    [path] = main(argv)
    doc = json.loads(path.read_text())
    assert doc["machine"]["jobs"] == 2 and doc["machine"]["torch_threads"] >= 1
    # the plan's order (naive before joint), whichever finished first
    assert list(doc["strategies"]) == ["naive", "joint", "retrain_each"]
    assert doc["strategies"]["naive"]["peak_mem_mb"] > 0


def test_the_scale_says_which_strategies_it_left_out(tmp_path, monkeypatch):
    import benchmarks.continual as continual

    monkeypatch.setitem(continual.SCALES["small"]["strategies"], "clinc150", ["naive"])
    argv = ["--stream", "clinc150", "--caps", "3,1,2", "--batches", "2", "--set", "model.base=tiny",
            "--set", "train.epochs=1", "--out", str(tmp_path), "--no-isolate", "--no-plots"]
    [path] = main(argv)
    doc = json.loads(path.read_text())
    assert set(doc["strategies"]) == {"naive", "retrain_each"}
    assert "not run at --scale small" in doc["skipped"]["joint"]
    assert "--strategies joint" in doc["skipped"]["joint"]
