"""dvc stage `drift`: the audited batch against its parent's training data and model,
through the task type's drift signals."""

from __future__ import annotations

import pandas as pd

from tasks.intake.batch import load_train
from tasks.stages import common


def main() -> None:
    p = common.params()
    parts = common.split_frames()
    parent = common.parent(p)
    reference = load_train(common.lineage(p), common.workspace())
    current = pd.concat([parts["train"], parts["test"]], ignore_index=True)
    out = common.stage_dir("drift")
    result = common.kind(p).drift(current, reference, p, common.parent_dir(p),
                                  common.registry().metadata(parent) if parent else None, out)
    head = result.headline()
    common.write_json(out / "metrics.json", {
        "drifted": result.drifted, "quality_dropped": result.quality_dropped, "signals": len(result.signals),
        "new_labels": len(result.new_labels), "reference_rows": result.reference_rows,
        "current_rows": result.current_rows, "scores": {k: v for k, v in head["scores"].items() if v is not None}})


if __name__ == "__main__":
    main()
