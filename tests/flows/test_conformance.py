"""Conformance: every task type goes through the one retrain flow and gets every guarantee.

Parametrised over every registered kind (tasks/kinds/ `KINDS`) plus a toy third one,
"does the text contain a digit" (tests/kinds/toy.py), registered only here: if a plug-in
is all a new task type needs, the toy passes everything the built-in kinds pass. Each
kind's tiny deliveries (tests/kinds/deliveries.py), in that kind's own file format, go
through the whole flow on a temporary Prefect server, once per kind (module fixture):

- a first batch is promoted, a second one is promoted with replay, the gate having
  judged every old slice (per step and against the lineage's floor) on the kind's statistic;
- a bad delivery is quarantined byte-for-byte with a report; an oversized one unread;
- a candidate the gate rejects leaves production untouched and its batch pending;
- lineage, `ratchet status`, `ratchet models list` and the model card show the kind's
  metric with a number; `ratchet validate` and `ratchet drift` read its files;
- a fine-tune SIGKILLed mid-training resumes to bitwise-identical weights;
- the champion answers only the exam rows it has no stored answer for, with the very
  sheets and gate decision of answering every row, and a store that does not fit the
  exam is not used.

Kind-specific behaviour (CoNLL conversion, IOB2 repair, per-entity-type scores, the
text classifier's per-label scores and S3 mirror) stays in test_retrain.py and
test_retrain_ner.py.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain import retrain
from kinds.deliveries import DELIVERIES, Deliveries
from kinds.toy import TOY
from tasks.kinds import KINDS, get_kind, register
from tasks.registry.store import Registry, lineage_entry

KIND_NAMES = [*sorted(KINDS), TOY.name]  # every registered kind, and the toy one registered here
# a gate no candidate can pass (and no retry): the rejection path, for any kind
REJECTING = {"gate.min_new_slice_score": 1.01, "remediation.max_attempts": 1, "train.epochs": 2}
runner = CliRunner()


@pytest.fixture(scope="module")
def toy_kind():
    """`task.type: toy` exists for this module only."""
    register(TOY)
    yield TOY
    KINDS.pop(TOY.name, None)


def snapshot(ws: Path) -> dict:
    """What a run that does not promote must leave as it was: aliases, the production
    link, the versions, the production lineage's exam."""
    models = ws / "models"
    return {"aliases": (models / "aliases.json").read_bytes(), "link": (models / "production").resolve(),
            "versions": sorted(p.name for p in (models / "versions").iterdir()),
            "history": (models / "history.jsonl").read_bytes()}


@dataclass
class Delivered:
    """One kind's workspace after its deliveries went through the flow, in this order."""

    name: str
    d: Deliveries
    ws: Path
    root: Path
    files: dict[str, Path]
    outcomes: dict[str, dict] = field(default_factory=dict)
    snapshots: dict[str, dict] = field(default_factory=dict)

    @property
    def kind(self):
        return get_kind(self.name)

    @property
    def reg(self) -> Registry:
        return Registry(self.ws / "models")


@pytest.fixture(scope="module", params=KIND_NAMES)
def delivered(request, tmp_path_factory, prefect_server, toy_kind, one_torch_thread) -> Delivered:
    assert request.param in DELIVERIES, f"{request.param}: add its tiny deliveries to tests/kinds/deliveries.py"
    d = DELIVERIES[request.param]
    root = tmp_path_factory.mktemp(f"conformance-{d.kind}")
    ws = root / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(d.params)
    files = {name: d.write(root / name, d.batches[i], seed=i + 1, slice_name=name.upper())
             for i, name in enumerate(("a", "b", "c"))}
    files["bad"] = root / f"bad{d.suffix}"
    files["bad"].write_bytes(d.bad)
    run = Delivered(d.kind, d, ws, root, files)
    flow = lambda name, **kw: retrain(batch=str(files[name]), workspace=str(ws), **kw)  # noqa: E731
    run.outcomes["first"] = flow("a")
    run.outcomes["second"] = flow("b")
    run.snapshots["promoted"] = snapshot(ws)
    run.outcomes["again"] = flow("a")
    run.outcomes["bad"] = flow("bad")
    run.snapshots["quarantined"] = snapshot(ws)
    run.outcomes["rejected"] = flow("c", overrides=REJECTING)
    run.snapshots["rejected"] = snapshot(ws)
    run.outcomes["pending_again"] = flow("c")
    return run


# --- promotion ---------------------------------------------------------------------------

def test_two_deliveries_are_promoted_and_production_works(delivered):
    first, second = delivered.outcomes["first"], delivered.outcomes["second"]
    assert [first["status"], second["status"]] == ["promoted", "promoted"], [first["reasons"], second["reasons"]]
    assert [first["exit_code"], second["exit_code"]] == [0, 0]
    reg = delivered.reg
    assert reg.versions() == ["v0001", "v0002"]
    assert reg.aliases() == {"production": "v0002", "previous": "v0001"}
    meta = reg.metadata("v0002")
    assert meta["task"] == delivered.name and meta["metric"] == delivered.kind.metric
    assert meta["parent"] == "v0001" and meta["batch_ids"] == [first["batch_id"], second["batch_id"]]
    assert set(meta["metrics"]["slices"]) == {"A", "B"}
    assert isinstance(meta["metrics"]["overall"][delivered.kind.metric], float)
    assert reg.verify("v0002") == []
    assert delivered.kind.works(reg.path("v0002")) is None  # the kind's own smoke test, on the stored copy
    assert sorted(second["details"]["new_labels"]) == sorted(delivered.d.new_labels)  # the head grew, or not


def test_the_second_is_trained_with_replay_and_gated_on_every_old_slice(delivered):
    second = delivered.outcomes["second"]["details"]
    assert second["train"]["replay_rows"] > 0 and second["train"]["resumed_from_step"] == 0
    checks = second["gate"]["checks"]
    by_kind = {}
    for c in checks:
        by_kind.setdefault(c["kind"], []).append(c)
    assert set(by_kind) == {"old_slice", "old_overall", "floor", "flips", "new_batch"}, [c["name"] for c in checks]
    old_slices = set(delivered.reg.metadata("v0001")["metrics"]["slices"])
    assert {c["name"] for c in by_kind["old_slice"]} == {f"slice:{s}" for s in old_slices}
    assert {c["name"] for c in by_kind["floor"]} == {f"floor:{s}" for s in old_slices}  # the lineage's answers
    assert all(c["reference"] == "v0001" for c in by_kind["floor"])
    assert all(c["verdict"] == "pass" and c["rows"] > 0 for c in checks)
    stat = delivered.kind.statistic(_gate_cfg(delivered))
    # the gate scored with the kind's statistic: its new-batch score is the sheet's headline metric
    [new] = by_kind["new_batch"]
    sheet = delivered.reg.metadata("v0002")["metrics"]["batches"][delivered.outcomes["second"]["batch_id"]]
    assert new["candidate"] == pytest.approx(sheet[delivered.kind.metric], abs=1e-4)
    assert new["name"] == "new batch held-out" + (f" ({stat.label})" if stat.label else "")
    answers = pd.read_parquet(delivered.reg.path("v0002") / "exam_answers.parquet")
    assert set(stat.columns) <= set(answers.columns)  # what the next gate's floor will read


def _gate_cfg(delivered):
    from tasks.core.config import load_params

    return load_params(delivered.ws / "params.yaml").gate


def test_every_outcome_leaves_its_decision_and_reports(delivered):
    for name, outcome in delivered.outcomes.items():
        run = delivered.ws / "reports" / outcome["run_id"]
        decision = json.loads((run / "decision.json").read_text())
        assert decision["status"] == outcome["status"] and decision["exit_code"] == outcome["exit_code"], name
    for name in ("first", "second", "rejected"):
        run = delivered.ws / "reports" / delivered.outcomes[name]["run_id"]
        assert (run / "drift.json").exists() and (run / "train_report.json").exists(), name
        assert delivered.outcomes[name]["details"]["drift"], name


def test_held_out_rows_join_the_exam_and_are_never_trained_on(delivered):
    kind, ws = delivered.kind, delivered.ws
    exam_texts = set()
    for name in ("first", "second"):
        bid = delivered.outcomes[name]["batch_id"]
        train = set(kind.describe(pd.read_parquet(ws / "data" / "batches" / bid / "train.parquet"))[0])
        exam = set(kind.describe(pd.read_parquet(ws / "data" / "exam" / f"{bid}.parquet"))[0])
        assert exam and train and not (train & exam), name
        exam_texts |= exam
    buffer = pd.read_parquet(ws / "models" / "production" / "replay.parquet")
    replayed = set(kind.describe(kind.training.from_buffer(buffer))[0])
    assert replayed and not (replayed & exam_texts)


def test_the_same_delivery_again_is_skipped(delivered):
    again = delivered.outcomes["again"]
    assert again["status"] == "skipped" and again["exit_code"] == 5 and "already accepted" in again["reasons"][0]
    assert again["batch_id"] == delivered.outcomes["first"]["batch_id"]


# --- refusals ----------------------------------------------------------------------------

def test_a_bad_delivery_is_quarantined_byte_for_byte_with_a_report(delivered):
    outcome, ws = delivered.outcomes["bad"], delivered.ws
    assert outcome["status"] == "quarantined" and outcome["exit_code"] == 4
    assert any(delivered.d.bad_reason in r for r in outcome["reasons"]), outcome["reasons"]
    kept = Path(outcome["details"]["quarantine"])
    assert (kept / "raw" / delivered.files["bad"].name).read_bytes() == delivered.d.bad
    report = json.loads((kept / "report.json").read_text())
    assert report["validation"]["passed"] is False
    assert (kept / "report.html").exists()
    assert delivered.snapshots["quarantined"] == delivered.snapshots["promoted"]
    assert not (ws / "data" / "batches" / outcome["batch_id"]).exists()
    assert not (ws / "data" / "exam" / f"{outcome['batch_id']}.parquet").exists()


def test_an_oversized_delivery_is_refused_unread(delivered, tmp_path):
    work = tmp_path / "ws"
    shutil.copytree(delivered.ws, work, symlinks=True)
    big = delivered.d.write(tmp_path / "big", delivered.d.batches[3], seed=9, size=40)
    before = snapshot(work)
    outcome = retrain(batch=str(big), workspace=str(work), overrides={"intake.max_bytes": 100})
    assert outcome["status"] == "quarantined" and outcome["exit_code"] == 4
    assert any("intake.max_bytes" in r for r in outcome["reasons"]), outcome["reasons"]
    assert snapshot(work) == before
    assert not (Path(outcome["details"]["quarantine"]) / "raw").exists()  # nothing of it was kept


def test_a_rejected_candidate_leaves_production_untouched_and_the_batch_pending(delivered):
    from tasks.drift.policy import pending_report

    rejected, ws = delivered.outcomes["rejected"], delivered.ws
    assert rejected["status"] == "rejected" and rejected["exit_code"] == 3, rejected["reasons"]
    assert rejected["production"] == "v0002" and rejected["version"] is None
    assert any("stays pending" in r for r in rejected["reasons"])
    assert delivered.snapshots["rejected"] == delivered.snapshots["promoted"]  # aliases, link, versions, moves
    assert delivered.reg.resolve("production") == "v0002"
    assert [p["batch_id"] for p in pending_report(ws / "data")] == [rejected["batch_id"]]
    again = delivered.outcomes["pending_again"]  # the same bytes: recognised, not trained twice
    assert again["status"] == "skipped" and "already pending" in again["reasons"][0]
    scratch = ws / ".ratchet" / "candidates"
    assert not [p for p in scratch.glob(f"{rejected['batch_id']}-*") if not p.name.endswith(".run")]


# --- what operators read -----------------------------------------------------------------

def test_lineage_status_models_list_and_card_show_the_kinds_metric(delivered, monkeypatch):
    import flows.cli

    kind, label, ws = delivered.kind, delivered.d.metric_label, delivered.ws
    entries = [lineage_entry(delivered.reg.metadata(v)) for v in ("v0002", "v0001")]
    for entry in entries:
        assert entry["metric"] == kind.metric and _is_score(entry["score"]), entry

    report = json.loads(runner.invoke(app, ["status", "--json", "--workspace", str(ws)]).stdout)
    assert [e["version"] for e in report["lineage"]] == ["v0002", "v0001"]
    assert all(e["metric"] == kind.metric and _is_score(e["score"]) for e in report["lineage"])
    record = report["continual"]["accuracy_matrix"]
    assert record["metric"] == kind.metric and [r["version"] for r in record["rows"]] == ["v0001", "v0002"]
    second = delivered.outcomes["second"]["batch_id"]
    assert record["accuracy"][1][1] == delivered.reg.metadata("v0002")["metrics"]["batches"][second][kind.metric]
    assert _is_score(record["accuracy"][0][1])  # v0001 examined on the second batch before learning it
    assert report["continual"]["bwt"] is not None

    monkeypatch.setattr(flows.cli.console, "width", 200)  # one line per row
    shown = runner.invoke(app, ["status", "--workspace", str(ws)]).stdout
    assert f"exam {label}" in shown and f"{label} matrix" in shown, shown
    assert f"{entries[0]['score']:.3f}" in shown
    listed = runner.invoke(app, ["models", "list", "--workspace", str(ws)])
    assert listed.exit_code == 0 and f"{entries[0]['score']:.3f}" in listed.stdout, listed.stdout

    card = (ws / "models" / "production" / "README.md").read_text()
    assert f"exam {label}" in card and f"{entries[0]['score']:.4f}" in card
    assert "## Continual learning" in card and "backward transfer" in card


def _is_score(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0 and not math.isnan(value)


def test_validate_and_drift_commands_read_the_kinds_deliveries(delivered):
    ws, d = str(delivered.ws), delivered.d
    good = d.write(delivered.root / "d", d.batches[3], seed=4, slice_name="D")
    checked = runner.invoke(app, ["validate", str(good), "--workspace", ws, "--json"])
    assert checked.exit_code == 0, checked.output
    refused = runner.invoke(app, ["validate", str(delivered.files["bad"]), "--workspace", ws])
    assert refused.exit_code == 4, refused.output
    drift = runner.invoke(app, ["drift", str(good), "--workspace", ws, "--json"])
    assert drift.exit_code == 0, drift.output
    assert "drifted" in json.loads(drift.stdout)


# --- a killed fine-tune ------------------------------------------------------------------

def test_a_sigkilled_fine_tune_resumes_to_bitwise_identical_weights(delivered, tmp_path):
    """The second delivery's fine-tune from v0001 (growth, replay, distillation, a frozen
    lower layer all on the resumed path), SIGKILLed at step 7: the rerun resumes from the
    step-6 checkpoint and ends with the very weights of a run never interrupted."""
    from safetensors.torch import load_file

    from crashes import TRAIN, crash_at, sigkilled_at
    from tasks.train.checkpoint import FILE
    from tasks.core.config import load_params, with_overrides
    from tasks.train.finetune import train_candidate
    from tasks.registry.store import weights_sha256

    params = with_overrides(load_params(delivered.ws / "params.yaml"),
                            {**{f"train.{k}": v for k, v in TRAIN.items()}, "train.epochs": 3,
                             "train.freeze_layers": 1, "replay.capacity": 30})
    second = delivered.outcomes["second"]["batch_id"]
    rows = pd.read_parquet(delivered.ws / "data" / "batches" / second / "train.parquet")
    champion = delivered.reg.path("v0001")
    kw = dict(champion_dir=champion, train_rows=rows, params=params, training=delivered.kind.training)

    whole = train_candidate(out_dir=tmp_path / "whole", **kw)
    assert whole.train.steps > 7 and whole.train.replay_rows > 0 and whole.train.dev_losses
    out = tmp_path / "killed"
    assert sigkilled_at(7, out_dir=out, **kw) == -signal.SIGKILL
    assert not out.exists(), "an unfinished candidate must never be in place"
    assert (tmp_path / "killed.run" / FILE).exists()

    resumed = train_candidate(out_dir=out, **kw)
    assert resumed.train.resumed_from_step == 6
    assert weights_sha256(resumed.path) == weights_sha256(whole.path)  # bitwise
    assert resumed.train.losses == whole.train.losses and resumed.train.dev_losses == whole.train.dev_losses
    assert (resumed.labels, resumed.new_labels) == (whole.labels, whole.new_labels)
    name = "bert.embeddings.word_embeddings.weight"  # frozen: where the champion left it
    assert load_file(Path(resumed.path) / "model.safetensors")[name].equal(
        load_file(champion / "model.safetensors")[name])
    assert not (tmp_path / "killed.run").exists(), "checkpoints go once the candidate is in place"

    again = train_candidate(out_dir=out, on_step=crash_at(1), **kw)  # finished: reused, not retrained
    assert again.train.inputs_sha256 == resumed.train.inputs_sha256


# --- the champion's stored answers -------------------------------------------------------

def _exam_rows(delivered, *names: str) -> dict[str, int]:
    return {n: len(pd.read_parquet(delivered.ws / "data" / "exam" / f"{delivered.outcomes[n]['batch_id']}.parquet"))
            for n in names}


def test_the_champion_answers_only_the_new_rows_and_the_gate_decides_the_same(delivered, tmp_path):
    """The rejected third delivery was judged against v0002 answering from its stored answers
    on the first two batches' held-out rows and running only on the third's; judged again
    with every row answered (evaluate.reuse_answers false), every check row is the same."""
    rejected = delivered.outcomes["rejected"]
    rows = _exam_rows(delivered, "first", "second", "rejected")
    reused, computed = rows["first"] + rows["second"], rows["rejected"]
    assert rejected["details"]["champion_answers"] == {
        "reused": reused, "computed": computed, "recomputed_because": None,
        "summary": f"reused {reused} rows, computed {computed}"}
    work = tmp_path / "ws"
    shutil.copytree(delivered.ws, work, symlinks=True)
    again = retrain(batch=str(delivered.files["c"]), workspace=str(work), force=True,
                    overrides={**REJECTING, "evaluate.reuse_answers": False})
    assert again["status"] == "rejected", again["reasons"]
    how = again["details"]["champion_answers"]
    assert (how["reused"], how["computed"]) == (0, reused + computed) and "reuse_answers" in how["recomputed_because"]
    for key in ("gate", "gate_table", "champion_scores", "candidate_scores", "flips"):
        if key == "flips":
            strip = lambda f: {k: v for k, v in f.items() if k != "rows_file"}  # noqa: E731  paths differ
            assert strip(again["details"][key]) == strip(rejected["details"][key])
        else:
            assert again["details"][key] == rejected["details"][key], key


def test_reused_answers_give_the_very_sheets_and_a_store_that_does_not_fit_is_not_used(delivered, tmp_path):
    from tasks.core.config import load_params
    from tasks.judge.answers import ANSWERS_FILE, CONTENT, lineage_answers
    from tasks.judge.evaluate import load_exam
    from tasks.judge.gate import decide
    from tasks.judge.reuse import examine

    kind, reg = delivered.kind, delivered.reg
    params = load_params(delivered.ws / "params.yaml")
    stat = kind.statistic(params.gate)
    ids = [delivered.outcomes[n]["batch_id"] for n in ("first", "second", "rejected")]
    exam, new = load_exam(delivered.ws / "data" / "exam", ids), ids[-1:]
    champion = tmp_path / "v0002"  # a copy: the registry's own stays sealed
    shutil.copytree(reg.path("v0002"), champion)
    full, _ = examine(kind, champion, exam, new, params, reuse=False)
    reused, how = examine(kind, champion, exam, new, params, reuse=True)
    old = sum(_exam_rows(delivered, "first", "second").values())
    assert (how.reused, how.computed, how.recomputed_because) == (old, len(exam) - old, None)
    assert reused == full  # every sheet: all / old / new, overall, slices, batches, rows
    candidate, _ = examine(kind, reg.path("v0001"), exam, new, params)  # any other model's sheets
    history = lineage_answers(reg, "v0002")
    judged = [decide(candidate, champ, params.gate, 7, history, stat).to_dict() for champ in (reused, full)]
    assert judged[0] == judged[1] and judged[0]["checks"]

    stored = pd.read_parquet(champion / ANSWERS_FILE)
    assert CONTENT in stored.columns
    right = stored.index[stored["correct"] == 1][0]  # a row it answered right
    at = stored.index == right
    misfits = {
        "differ from the rows": stored.assign(**{CONTENT: stored[CONTENT].where(~at, "0" * 16)}),
        "is not what their stored answers score": stored.assign(pred=stored["pred"].where(~at, "")),
        "lack content": stored.drop(columns=[CONTENT]),
        f"lack {stat.columns[-1]}": stored.drop(columns=[stat.columns[-1]]),
        "no stored answers": None,
    }
    for why, table in misfits.items():
        if table is None:
            (champion / ANSWERS_FILE).unlink()
        else:
            table.to_parquet(champion / ANSWERS_FILE, index=False)
        got, how = examine(kind, champion, exam, new, params, reuse=True)
        assert (how.reused, how.computed) == (0, len(exam)) and why in how.recomputed_because, (why, how)
        assert got == full, why
    stored.to_parquet(champion / ANSWERS_FILE, index=False)  # the store as sealed, an exam row changed
    changed = exam.assign(slice=exam["slice"].where(exam.index != 0, "Z"))
    got, how = examine(kind, champion, changed, new, params, reuse=True)
    assert how.reused == 0 and "differ from the rows" in how.recomputed_because
    assert got == examine(kind, champion, changed, new, params)[0]


# --- the config knows the kinds only through the registry --------------------------------

# --- serving ---------------------------------------------------------------------------

def test_the_served_model_answers_in_the_kinds_format_and_follows_a_rollback(delivered, tmp_path):
    """`ratchet serve-model`'s app (in process here; tests/serve/ runs the real server)
    answers the exam's sentences with production, as the kind's offline predictions,
    and moves to `previous` when production is rolled back."""
    import time

    from fastapi.testclient import TestClient

    from tasks.core.config import load_params
    from tasks.serve.app import Limits, build_app
    from tasks.serve.follow import Follower

    work = tmp_path / "ws"
    shutil.copytree(delivered.ws, work, symlinks=True)
    reg, params = Registry(work / "models"), load_params(work / "params.yaml")
    exam = pd.read_parquet(work / "data" / "exam" / f"{delivered.outcomes['first']['batch_id']}.parquet")
    inputs = delivered.kind.describe(exam)[0][:5]
    app = build_app(Follower(reg, params), limits=Limits(poll_s=0.05))
    with TestClient(app) as client:
        production, previous = reg.resolve("production"), reg.resolve("previous")
        for version in (production, previous):
            if version == previous:
                reg.rollback(reason="test")
                deadline = time.monotonic() + 30
                while client.get("/version").json()["version"] != previous:
                    assert time.monotonic() < deadline, "the server did not follow the rollback"
                    time.sleep(0.05)
            body = client.post("/invocations", json={"inputs": inputs}).json()
            expected = delivered.kind.predictor(reg.path(version), params)
            assert body["version"] == version
            assert body["predictions"] == expected.predict(expected.parse(inputs))
        assert client.post("/invocations", json={"inputs": [7]}).status_code == 400
        assert client.get("/health").json()["task"] == delivered.kind.name


def test_task_type_is_checked_against_the_registered_kinds(toy_kind, tmp_path):
    from tasks.core.config import ConfigError, load_params, params_from_dict

    assert params_from_dict({"task": {"type": "toy"}}).task.type == "toy"
    with pytest.raises(ConfigError, match=r"task\.type must be one of \['classification', 'ner', 'toy'\]"):
        params_from_dict({"task": {"type": "sentiment"}})
    KINDS.pop("toy")
    try:  # not registered: not a task type
        (tmp_path / "params.yaml").write_text("task: {type: toy}\n")
        with pytest.raises(ConfigError, match=r"task\.type must be one of \['classification', 'ner'\], got 'toy'"):
            load_params(tmp_path / "params.yaml")
    finally:
        register(toy_kind)
