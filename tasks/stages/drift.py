"""dvc stage `drift`: the audited batch against its parent's training data and model,
through the task type's drift signals."""

from __future__ import annotations

from html import escape

import pandas as pd

from tasks.intake.batch import load_train
from tasks.judge.evaluate import load_exam
from tasks.stages import common


def main() -> None:
    p = common.params()
    parts = common.split_frames()
    parent = common.parent(p)
    lineage, ws = common.lineage(p), common.workspace()
    reference = load_train(lineage, ws)
    current = pd.concat([parts["train"], parts["test"]], ignore_index=True)
    out = common.stage_dir("drift")
    result = common.kind(p).drift(current, reference, p, common.parent_dir(p),
                                  common.registry().metadata(parent) if parent else None, out,
                                  load_exam(ws.exam_dir, lineage))
    head = result.headline()
    html = out / "drift.html"  # a declared out: say why when the task type wrote no Evidently report
    if not html.exists():
        html.write_text(f"<html><body><p>No Evidently report: {escape(head['reason'])}</p></body></html>\n")
    # the kind's headline facts: lists (signals, new labels or entity types) as counts
    common.write_json(out / "metrics.json", {
        **{k: len(v) if isinstance(v, list) else v for k, v in head.items()
           if k not in ("reason", "scores", "html_path", "json_path")},
        "scores": {k: v for k, v in head["scores"].items() if v is not None}})

if __name__ == "__main__":
    main()
