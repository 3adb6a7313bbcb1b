"""The retrain path for `task.type: ner`: one delivered NER batch, end to end.

intake -> validate -> (quarantine | split) -> drift -> finetune -> evaluate -> gate -> promote

The same shape, outcomes, exit codes and decision JSON as flows/retrain.py, which hands
a run over to `retrain_ner` when params.yaml says `task.type: ner`; each stage is a
function from tasks/ner/ (or a generic one: batch ids, quarantine, promotion lock,
registry, DVC recording, S3 mirror, the retrain policy and its pending batches, the
score matrix across versions, here of entity micro F1).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task

from flows.retrain import Outcome, Run, _claim_production, _finish, _policy_stage, _quarantine, _stamp, _verdict
from tasks.audit import record_data, record_promotion_task, version_metadata
from tasks.config import params_hash
from tasks.intake import DEV_NAMES, TEST_NAMES, TRAIN_NAMES, Intake, Split, assign_split, store_split
from tasks.lock import promotion_lock
from tasks.matrix import extend
from tasks.policy import clear_pending, load_pending
from tasks.registry import Registry, RegistryError, register_and_promote
from tasks.registry_s3 import Mirror, publish_task
from tasks.storage import StorageError
from tasks.workspace import Workspace

COLUMNS = ["tokens", "tags", "slice", "batch_id"]


def ner_intake(source: str, ws: Workspace, params) -> Intake:
    """The classification intake (raw bytes kept, intake.max_bytes enforced) with the
    NER parser (JSONL, Parquet, CoNLL)."""
    from tasks.intake import intake
    from tasks.ner.conll import parse_ner_bytes

    return intake(source, ws, params.validate, max_bytes=params.intake.max_bytes, parser=parse_ner_bytes)


def _sentence_keys(frame: pd.DataFrame | None) -> pd.Series:
    if frame is None or not len(frame):
        return pd.Series([], dtype=str)
    return frame["tokens"].map(lambda t: " ".join(t).lower())


def remove_leaks(parts: Split, ws: Workspace, lineage: list[str]) -> tuple[Split, dict[str, int]]:
    """Train sentences already in the exam (or in this batch's held-out part) are not
    trained on; held-out sentences that were trained on earlier are not examined."""
    exam = set(_sentence_keys(_frames(ws, lineage, "exam"))) | set(_sentence_keys(parts.test))
    trained = set(_sentence_keys(_frames(ws, lineage, "train")))
    train_leak = _sentence_keys(parts.train).isin(exam).to_numpy()
    dev_leak = _sentence_keys(parts.dev).isin(exam).to_numpy()
    test_leak = _sentence_keys(parts.test).isin(trained).to_numpy()
    clean = Split(parts.train[~train_leak].reset_index(drop=True), parts.dev[~dev_leak].reset_index(drop=True),
                  parts.test[~test_leak].reset_index(drop=True))
    return clean, {"train_in_exam": int(train_leak.sum()), "dev_in_exam": int(dev_leak.sum()),
                   "exam_already_trained": int(test_leak.sum())}


def split_ner(frame: pd.DataFrame, batch_id: str, test_share: float, ws: Workspace,
              lineage: list[str] | None = None) -> tuple[Split, dict[str, int]]:
    """train / dev / held-out sentences (the `split` column, else a stable hash of the
    sentence, so repeated sentences stay on one side), leaks against earlier batches
    removed, stored like classification batches; held-out sentences join the exam."""
    df = frame.reset_index(drop=True).copy()
    split = assign_split(df.assign(text=[" ".join(t) for t in df["tokens"]]), test_share)
    df["slice"] = df["slice"].astype(str) if "slice" in df.columns else batch_id
    df["batch_id"] = batch_id
    parts, leaks = remove_leaks(Split(*(df.loc[split.isin(names), COLUMNS].reset_index(drop=True)
                                        for names in (TRAIN_NAMES, DEV_NAMES, TEST_NAMES))), ws, lineage or [])
    store_split(parts, batch_id, ws, task="ner", leakage=leaks)
    return parts, leaks


def _frames(ws: Workspace, batch_ids: list[str], part: str) -> pd.DataFrame | None:
    folder = ws.exam_dir if part == "exam" else None
    paths = [(folder / f"{b}.parquet") if folder else ws.batch_dir(b) / f"{part}.parquet" for b in batch_ids]
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True) if paths else None


def _validate_stage(run: Run, got: Intake) -> Outcome | pd.DataFrame:
    from tasks.ner.validate import production_types, validate_ner

    if got.too_large:  # refused from its size; nothing was read
        from tasks.validate import too_large

        return _quarantine(run, got, too_large(got.too_large))
    known = production_types(run.reg) if run.champion else None
    checked = validate_ner(got.frame, run.params.ner, run.params.validate, known_types=known,
                           parse_error=got.parse_error)
    return _verdict(run, got, checked)


def recorded_f1(metadata: dict) -> float | None:
    """Production's micro F1 on its own exam when it was promoted (the quality baseline)."""
    return ((metadata.get("metrics") or {}).get("overall") or {}).get("f1")


def _drift_stage(run: Run, split: Split, lineage: list[str], batch_id: str, force: bool,
                 waiting: int = 0) -> Outcome | None:
    """Drift against the sentences behind production (and pending batches), then the
    retrain policy (tasks/policy.py, as for text batches): a batch it turns down is
    skipped (exit 5) but kept pending, and the next retrain trains on its sentences."""
    from tasks.ner.drift import detect_ner_drift
    from tasks.ner.model import load_tagger

    meta = run.reg.metadata(run.champion) if run.champion else {}
    champion = load_tagger(run.reg.path(run.champion)) if run.champion else None
    drift = detect_ner_drift(pd.concat([split.train, split.test], ignore_index=True), _frames(run.ws, lineage, "train"),
                             run.params.drift, champion=champion, out_dir=run.ws.run_dir(run.run_id),
                             seed=run.params.train.seed, max_length=run.params.model.max_length,
                             recorded_f1=recorded_f1(meta))
    return _policy_stage(run, drift, batch_id, force, waiting + len(split.train), meta)


def _train_and_judge(run: Run, split: Split, batch_id: str, lineage: list[str]):
    from tasks.ner.evaluate import batch_types, evaluate_tagger
    from tasks.ner.gate import decide_ner
    from tasks.ner.model import load_tagger
    from tasks.ner.train import train_tagger

    params = run.params
    champion_dir = run.reg.checked_path(run.champion) if run.champion else None
    key = f"{batch_id}-{run.champion or 'base'}-{params_hash(params)}"
    candidate = train_tagger(champion_dir=champion_dir, train_rows=split.train, out_dir=run.ws.scratch_dir / key,
                             params=params, dev_rows=split.dev)
    exam = _frames(run.ws, [b for b in lineage if b != batch_id] + [batch_id], "exam")
    kw = {"batch_size": params.evaluate.batch_size, "max_length": params.model.max_length,
          "annotated": batch_types(exam)}
    cand = evaluate_tagger(load_tagger(candidate.path), exam, batch_id, **kw)
    champ = evaluate_tagger(load_tagger(champion_dir) if champion_dir else None, exam, batch_id, **kw)
    decision = decide_ner(cand, champ if run.champion else None, params.gate, params.train.seed)
    strip = lambda sheet: {k: v for k, v in sheet.items() if k != "rows"}  # noqa: E731
    run.details.update({"train": candidate.train.to_dict() | {"losses": None}, "new_types": candidate.new_labels,
                        "gate": decision.to_dict(), "gate_table": decision.markdown(),
                        "candidate_scores": strip(cand), "champion_scores": strip(champ)})
    return candidate, strip(cand), decision


def tagger_works(path: Path) -> str | None:
    """Load a stored tagger and tag once; None when it works (registry.register_and_promote's check)."""
    from tasks.ner.model import load_tagger

    clf = load_tagger(path)
    probe = clf.tokenizer([["ratchet", "smoke", "test"]], is_split_into_words=True, return_tensors="pt")
    return None if clf.model(**probe).logits.shape[-1] == len(clf.labels) else "a working tagger"


@task(name="promote", retries=2, retry_delay_seconds=[1, 5])
def _register_task(reg: Registry, candidate_dir: Path, metadata: dict) -> str:
    return register_and_promote(reg, candidate_dir, metadata, works=tagger_works)


def _promote_stage(run: Run, candidate, sheet: dict, decision, batch_id: str, lineage: list[str]) -> str:
    metadata = version_metadata(
        run.params, parent=run.champion, lineage=lineage, batch_id=batch_id, source=run.source, metrics=sheet,
        gate=decision.to_dict(), train=candidate.train.to_dict(), run_id=run.run_id, root=run.ws.root,
        data_hash=record_data(run.ws)) | {"task": "ner"}
    parent = run.reg.metadata(run.champion) if run.champion else {}
    metadata["accuracy_matrix"] = extend(  # entity micro F1 of each version on each batch (tasks/matrix.py)
        parent.get("accuracy_matrix"), parent_version=run.champion, batch_id=batch_id,
        batch_ids=metadata["batch_ids"], candidate=sheet,
        champion=run.details.get("champion_scores") if run.champion else None, metric="f1")
    version = _register_task(run.reg, Path(candidate.path), metadata)
    run.details["audit"] = record_promotion_task(run.ws, run.params, run.reg, version)
    mirror = Mirror.from_config(run.params.registry)
    if mirror:
        try:
            run.details["mirror"] = publish_task(run.reg, mirror, version)
        except (RegistryError, StorageError) as exc:
            run.details["mirror"] = {"mirror": mirror.uri, "version": version, "error": str(exc),
                                     "retry": f"ratchet models push {version}"}
            get_run_logger().warning("S3 mirror not updated: %s", exc)
    return version


def retrain_ner(run: Run, batch: str, force: bool = False) -> dict:
    """Called by the retrain flow (inside its flow run) when task.type is ner."""
    from tasks.intake import is_known

    ws, params = run.ws, run.params
    known = is_known(batch, ws, params.validate.s3_endpoint or None)
    if known and not force:
        run.run_id = f"{_stamp()}-{known}"
        return _finish(run.outcome("skipped", known, [
            f"batch {known} was already accepted; use --force to train on it again"]), run)
    got = ner_intake(batch, ws, params)
    run.run_id = f"{_stamp()}-{got.batch_id}"
    checked = _validate_stage(run, got)
    if isinstance(checked, Outcome):
        return _finish(checked, run)
    lineage = run.reg.metadata(run.champion)["batch_ids"] if run.champion else []
    # batches the policy skipped earlier join the reference, the training sentences and the lineage
    pending = [b for b in load_pending(ws.data_dir) if b not in lineage and b != got.batch_id]
    lineage = lineage + pending
    split, leaks = split_ner(checked, got.batch_id, params.intake.test_share, ws, lineage)
    run.details["leakage"] = leaks
    waiting = _frames(ws, pending, "train")
    settled = _drift_stage(run, split, lineage, got.batch_id, force, 0 if waiting is None else len(waiting))
    if settled:
        return _finish(settled, run)
    if waiting is not None:
        split = Split(pd.concat([waiting, split.train], ignore_index=True), split.dev, split.test)
    with promotion_lock(ws.models_dir, params.ops.promote_limit, params.ops.lock_timeout_seconds):
        lineage, settled = _claim_production(run, got.batch_id, force)
        if settled:
            return _finish(settled, run)
        lineage = lineage + [b for b in pending if b not in lineage]
        candidate, sheet, decision = _train_and_judge(run, split, got.batch_id, lineage)
        try:
            if not decision.promote:
                return _finish(run.outcome("rejected", got.batch_id, decision.reasons), run)
            version = _promote_stage(run, candidate, sheet, decision, got.batch_id, lineage)
            clear_pending(ws.data_dir, [*lineage, got.batch_id])
            return _finish(run.outcome("promoted", got.batch_id, decision.reasons, version=version), run)
        finally:
            shutil.rmtree(candidate.path, ignore_errors=True)


def check_drift(path: Path, ws: Workspace, params, run_id: str):
    """`ratchet drift FILE` for task.type ner: (validation, drift or None when rejected),
    against the sentences behind production; writes only reports/<run_id>/."""
    from tasks.ner.drift import detect_ner_drift
    from tasks.ner.model import load_tagger
    from tasks.ner.validate import check_file

    _, checked = check_file(str(path), ws, params)
    if not checked.passed:
        return checked, None
    from tasks.ner.conll import parse_ner_bytes

    frame = checked.kept(parse_ner_bytes(path.read_bytes(), path.name, params.validate.encoding))
    reg = Registry(ws.models_dir)
    champion = reg.resolve("production")
    meta = reg.metadata(champion) if champion else {}
    lineage = list(meta.get("batch_ids", []))
    lineage += [b for b in load_pending(ws.data_dir) if b not in lineage]  # as the flow's reference
    result = detect_ner_drift(frame, _frames(ws, lineage, "train"), params.drift,
                              champion=load_tagger(reg.path(champion)) if champion else None,
                              out_dir=ws.run_dir(run_id), seed=params.train.seed, max_length=params.model.max_length,
                              recorded_f1=recorded_f1(meta))
    return checked, result
