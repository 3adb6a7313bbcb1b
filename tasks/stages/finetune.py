"""dvc stage `finetune`: the audited parent (or the base model) + the batch + replay ->
build/finetune/candidate, with the task type's training head."""

from __future__ import annotations

import pandas as pd

from tasks.stages import common
from tasks.train.finetune import train_candidate


def main() -> None:
    p = common.params()
    out = common.stage_dir("finetune")
    frames = common.split_frames()
    candidate = train_candidate(champion_dir=common.parent_dir(p), train_rows=frames["train"],
                                dev_rows=frames["dev"], out_dir=out / "candidate", params=p,
                                training=common.kind(p).training)
    report = candidate.train.to_dict()
    pd.DataFrame({"step": range(1, len(report["losses"]) + 1), "loss": report.pop("losses")}).to_csv(
        out / "loss.csv", index=False)
    common.write_json(out / "metrics.json", report)


if __name__ == "__main__":
    main()
