"""dvc stage `gate`: the decision for the audited candidate, as the flow would take it,
with the task type's statistic."""

from __future__ import annotations

from tasks.judge.gate import decide
from tasks.stages import common


def main() -> None:
    p = common.params()
    sheets = common.read_json(common.BUILD / "evaluate" / "scores.json")
    champion = sheets["champion"] if common.parent(p) else None
    decision = decide(sheets["candidate"], champion, p.gate, p.train.seed, sheets.get("history"),
                      common.kind(p).statistic(p.gate), sheets.get("labels"))
    out = common.stage_dir("gate")
    common.write_json(out / "decision.json", {**decision.to_dict(), "table": decision.markdown()})
    common.write_json(out / "metrics.json", {
        "promote": decision.promote, "checks": len(decision.checks),
        "failed_checks": sum(not c.passed for c in decision.checks),
        **{f"candidate.{c.name}": c.candidate for c in decision.checks}})


if __name__ == "__main__":
    main()
