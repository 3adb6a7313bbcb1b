"""dvc stage `intake`: parse the audited batch (`audit.batch`) into build/intake/."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.intake.batch import batch_id_for, parse_delivery, size_problem
from tasks.stages import common


def main() -> None:
    p = common.params()
    source = Path(p.audit.batch)
    if not source.exists():
        raise SystemExit(f"error: audit.batch: no batch file at {source} (run `make run` first, or set it)")
    too_large = size_problem(source.stat().st_size, p.intake.max_bytes)
    if too_large:
        raise SystemExit(f"error: audit.batch: {too_large}")
    raw = source.read_bytes()
    out = common.stage_dir("intake")
    got = parse_delivery(raw, source.name, p.validate.encoding, batch_id_for(raw), source, common.kind(p).parse,
                         p.intake.max_bytes)
    # a declared out even when unparseable: validate reports the parse error
    (got.frame if got.frame is not None else pd.DataFrame()).to_pickle(out / "frame.pkl")
    info = {"batch_id": got.batch_id, "source": str(source), "bytes": len(raw), "parse_error": got.parse_error,
            "rows": got.rows, "malformed": got.malformed}
    common.write_json(out / "batch.json", info)
    common.write_json(out / "metrics.json", {"bytes": len(raw), "rows": len(got.rows or []),
                                             "malformed_rows": len(got.malformed), "parsed": got.parse_error is None})


if __name__ == "__main__":
    main()
