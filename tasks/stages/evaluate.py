"""dvc stage `evaluate`: candidate and parent on the parent's exam plus this batch's
held-out rows, through the task type's evaluation (its metric in metrics.json)."""

from __future__ import annotations

import pandas as pd

from tasks.judge.answers import lineage_answers, lineage_labels
from tasks.judge.evaluate import load_exam
from tasks.stages import common


def main() -> None:
    p = common.params()
    kind, ws = common.kind(p), common.workspace()
    exam = pd.concat([load_exam(ws.exam_dir, common.lineage(p)), common.split_frames()["test"]], ignore_index=True)
    new_ids = [common.batch_id()]
    parent = common.parent_dir(p)
    sheets = {"candidate": kind.evaluate(common.BUILD / "finetune" / "candidate", exam, new_ids, p),
              "champion": kind.evaluate(parent, exam, new_ids, p) if parent else None}
    out = common.stage_dir("evaluate")
    # the parent's lineage answers: the gate stage's floor, as the flow judged it
    history = lineage_answers(common.registry(), common.parent(p))
    common.write_json(out / "scores.json", {**sheets, "history": {v: a.to_dict() for v, a in history.items()},
                                            "labels": lineage_labels(common.registry(), history)})
    cand = sheets["candidate"]["all"]
    common.write_json(out / "metrics.json", {
        "candidate": {"overall": cand["overall"][kind.metric],
                      **{k: v[kind.metric] for k, v in cand["slices"].items()}}})
    pd.DataFrame([{"slice": k, "model": who, "score": v[kind.metric]} for who in sheets if sheets[who]
                  for k, v in sheets[who]["all"]["slices"].items()]).to_csv(out / "slices.csv", index=False)


if __name__ == "__main__":
    main()
