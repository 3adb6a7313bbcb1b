"""Gate: promote only when nothing the champion knew got worse and the new batch was learned.

A pure function over two score sheets from `tasks.evaluate`. Rules:
- every old slice (in the exam before this batch): candidate accuracy >= champion - tolerance;
- the old exam as a whole: candidate accuracy >= champion - tolerance;
- the new batch's held-out rows: candidate accuracy >= min_new_slice_score.
Every rule yields a row with its verdict, so decision.json says exactly why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tasks.config import GateConfig


@dataclass(frozen=True)
class Check:
    name: str
    kind: str          # "old_slice" | "old_overall" | "new_batch"
    champion: float | None
    candidate: float
    threshold: float
    passed: bool


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def markdown(self) -> str:
        lines = ["| check | champion | candidate | delta | threshold | verdict |", "|---|---|---|---|---|---|"]
        for c in self.checks:
            champ = "-" if c.champion is None else f"{c.champion:.4f}"
            delta = "-" if c.champion is None else f"{c.candidate - c.champion:+.4f}"
            verdict = "pass" if c.passed else "FAIL"
            lines.append(f"| {c.name} | {champ} | {c.candidate:.4f} | {delta} | {c.threshold:.4f} | {verdict} |")
        return "\n".join(lines)


def _old_checks(candidate: dict, champion: dict, old_slices: list[str], tol: float) -> list[Check]:
    checks = []
    for name in old_slices:
        champ = champion["slices"][name]["accuracy"]
        cand = candidate["slices"].get(name, {"accuracy": 0.0})["accuracy"]
        threshold = round(champ - tol, 4)  # accuracies are rounded to 4 places; so is the bar
        checks.append(Check(f"slice:{name}", "old_slice", champ, cand, threshold, cand >= threshold))
    return checks


def decide(*, candidate_old: dict | None, champion_old: dict | None, candidate_new: dict,
           old_slices: list[str], cfg: GateConfig) -> GateDecision:
    """`*_old` are score sheets on the exam as it was before this batch (None when empty);
    `candidate_new` is the candidate's sheet on this batch's held-out rows."""
    checks: list[Check] = []
    if champion_old is not None and candidate_old is not None:
        checks += _old_checks(candidate_old, champion_old, old_slices, cfg.tolerance)
        champ, cand = champion_old["overall"]["accuracy"], candidate_old["overall"]["accuracy"]
        threshold = round(champ - cfg.tolerance, 4)
        checks.append(Check("old exam overall", "old_overall", champ, cand, threshold, cand >= threshold))
    new_acc = candidate_new["overall"]["accuracy"]
    checks.append(Check("new batch held-out", "new_batch", None, new_acc, cfg.min_new_slice_score,
                        new_acc >= cfg.min_new_slice_score))
    failed = [c for c in checks if not c.passed]
    if not failed:
        reasons = [f"all {len(checks)} checks passed"]
    else:
        reasons = [f"{c.name}: candidate {c.candidate:.4f} below threshold {c.threshold:.4f}" for c in failed]
    if candidate_new["overall"]["rows"] == 0:
        reasons = ["the batch has no held-out rows, so learning it cannot be shown: add a `split` "
                   "column with test rows, or more rows (intake.test_share of them are held out)"]
    return GateDecision(promote=not failed, reasons=reasons, checks=checks)


# --- Prefect edge ------------------------------------------------------------------
from prefect import task  # noqa: E402


@task(name="gate")
def gate_task(candidate: dict, champion: dict | None, cfg: GateConfig) -> GateDecision:
    """Gate on `tasks.evaluate.evaluate` sheets; `champion` None before the first promotion."""
    old_slices = sorted(candidate["old"]["slices"]) if candidate["old"] else []
    return decide(candidate_old=candidate["old"], champion_old=champion["old"] if champion else None,
                  candidate_new=candidate["new"], old_slices=old_slices, cfg=cfg)


def main() -> None:
    """dvc stage `gate`: the decision for the audited candidate, as the flow would take it."""
    from tasks import pipeline

    p = pipeline.params()
    sheets = pipeline.read_json(pipeline.BUILD / "evaluate" / "scores.json")
    champion = sheets["champion"] if pipeline.parent(p) else None
    decision = gate_task.fn(sheets["candidate"], champion, p.gate)
    out = pipeline.stage_dir("gate")
    pipeline.write_json(out / "decision.json", {**decision.to_dict(), "table": decision.markdown()})


if __name__ == "__main__":
    main()
