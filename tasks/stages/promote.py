"""dvc stage `promote`: register the audited candidate unless its exact weights are
already a version (then the audit reproduced it); move production only when the gate
passed and the parent is still production. The version's record is built as the flow
builds it (tasks/audit/record.py `promotion_metadata`)."""

from __future__ import annotations

from tasks.audit.record import promotion_metadata
from tasks.registry.store import register_and_promote, weights_sha256
from tasks.stages import common


def main() -> None:
    p = common.params()
    kind, reg = common.kind(p), common.registry()
    candidate = common.BUILD / "finetune" / "candidate"
    decision = common.read_json(common.BUILD / "gate" / "decision.json")
    sha = weights_sha256(candidate)
    record = {"weights_sha256": sha, "gate_promote": decision["promote"], "parent": common.parent(p)}
    existing = reg.find_weights(sha)
    if existing:
        record |= {"status": "reproduced", "version": existing}
    elif not decision["promote"]:
        record |= {"status": "rejected", "version": None}
    else:
        scores = common.read_json(common.BUILD / "evaluate" / "scores.json")
        parent = record["parent"]
        meta = promotion_metadata(
            p, kind, parent_meta=reg.metadata(parent) if parent else {},
            champion_scores=scores["champion"]["all"] if parent else None, parent=parent, lineage=common.lineage(p),
            batch_id=common.batch_id(), source=p.audit.batch, metrics=scores["candidate"]["all"], gate=decision,
            train=common.read_json(common.BUILD / "finetune" / "metrics.json"), run_id="dvc")
        if parent == reg.resolve("production"):
            record |= {"status": "promoted", "version": register_and_promote(reg, candidate, meta, works=kind.works)}
        else:
            record |= {"status": "registered", "version": reg.register(candidate, meta)}
    out = common.stage_dir("promote")
    common.write_json(out / "promotion.json", record)
    common.write_json(out / "metrics.json", {"gate_promote": record["gate_promote"],
                                             "reproduced": record["status"] == "reproduced",
                                             "registered": record["status"] in ("promoted", "registered"),
                                             "promoted": record["status"] == "promoted"})


if __name__ == "__main__":
    main()
