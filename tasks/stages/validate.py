"""dvc stage `validate`: the task type's row checks on build/intake against the audited
parent, then its train/dev/test split of the rows that go on (leaks removed as in the flow)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.intake.batch import Intake
from tasks.stages import common


def main() -> None:
    p = common.params()
    kind, ws = common.kind(p), common.workspace()
    info = common.read_json(common.BUILD / "intake" / "batch.json")
    frame = None if info["parse_error"] else pd.read_pickle(common.BUILD / "intake" / "frame.pkl")
    got = Intake(info["batch_id"], Path(info["source"]), frame, info["parse_error"], rows=info.get("rows"),
                 malformed={int(k): v for k, v in (info.get("malformed") or {}).items()})
    result = kind.validate(got, ws, p, common.registry(), common.parent(p))
    out = common.stage_dir("validate")
    common.write_json(out / "validation.json", result.to_dict())
    common.write_json(out / "metrics.json", {"passed": result.passed, "failures": len(result.failures),
                                             "warnings": len(result.warnings), **result.counts()})
    if not result.passed:
        raise SystemExit(f"validation failed:\n{result.summary()}")
    split, _ = kind.split(result.kept(frame), info["batch_id"], p.intake.test_share, ws, common.lineage(p))
    for name in ("train", "dev", "test"):
        getattr(split, name).to_parquet(out / f"{name}.parquet", index=False)


if __name__ == "__main__":
    main()
