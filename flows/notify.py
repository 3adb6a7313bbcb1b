"""Notify: every decision made visible, in the Prefect UI and to a webhook.

The end of the path. After the flow writes `reports/<run>/decision.json`, this module
turns the decision into (a) Prefect artifacts on the flow run: a Markdown summary
(decision, validation and drift headlines, the gate table per slice, report paths,
registry version), a table of the gate checks, a link to the drift report; and (b) a
JSON summary POSTed to `ops.webhook_url` when one is set. The rendering functions are
pure; the Prefect artifact calls and the HTTP POST are the thin edge at the bottom.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT_SECONDS = 10
EMOJI = {"promoted": "✅", "rejected": "⛔", "quarantined": "🚫", "skipped": "⏭️"}


class WebhookError(RuntimeError):
    """The webhook did not answer 2xx; the message names the URL and the status."""


def validation_headline(details: dict) -> str:
    got = details.get("validation")
    if not got:
        return "validation: not run"
    if got.get("passed"):
        return f"validation: passed ({got.get('rows', '?')} rows)"
    failures = got.get("failures") or []
    names = ", ".join(sorted({f.get("expectation", "?") for f in failures}))
    return f"validation: FAILED {len(failures)} check(s): {names}"


def drift_headline(details: dict) -> str:
    got = details.get("drift")
    if not got:
        return "drift: not run"
    verdict = "DRIFT" if got.get("drifted") else "no drift"
    new = got.get("new_labels") or []
    tail = f"; new labels: {', '.join(map(str, new[:10]))}{' …' if len(new) > 10 else ''}" if new else ""
    return f"drift: {verdict} ({got.get('reason', '')}){tail}"


def report_paths(outcome: dict, run_dir: Path) -> dict[str, str]:
    """The reports this run left on disk, by name."""
    paths = {"decision": str(run_dir / "decision.json")}
    drift = outcome.get("details", {}).get("drift") or {}
    for key in ("html_path", "json_path"):
        if drift.get(key):
            paths[f"drift_{key.split('_')[0]}"] = str(drift[key])
    if outcome.get("details", {}).get("quarantine"):
        paths["quarantine"] = str(outcome["details"]["quarantine"])
    return paths


def gate_rows(outcome: dict) -> list[dict[str, Any]]:
    """One row per gate check (slice, old exam, new batch) for a table artifact."""
    checks = ((outcome.get("details") or {}).get("gate") or {}).get("checks") or []
    keep = ("name", "kind", "rows", "reference", "champion", "candidate", "lower_bound", "p_value", "threshold",
            "low_power", "neg_flips", "pos_flips", "verdict")
    return [{k: c.get(k) for k in keep} for c in checks]


def summary(outcome: dict, run_dir: Path, flow_run_id: str | None = None) -> dict[str, Any]:
    """The webhook's JSON body: the decision without the bulky details."""
    details = outcome.get("details") or {}
    return {
        "event": "ratchet.decision", "status": outcome["status"], "exit_code": outcome.get("exit_code"),
        "batch_id": outcome["batch_id"], "run_id": outcome["run_id"], "version": outcome.get("version"),
        "production": outcome.get("production"), "reasons": outcome.get("reasons", []),
        "validation": validation_headline(details), "drift": drift_headline(details),
        "gate": [{k: r[k] for k in ("name", "verdict", "champion", "candidate")} for r in gate_rows(outcome)],
        "attempts": len(details.get("attempts") or []), "pending": details.get("pending"),
        "negative_flip_rate": (details.get("flips") or {}).get("negative_rate"),
        "reports": report_paths(outcome, run_dir), "flow_run_id": flow_run_id,
    }


def markdown(outcome: dict, run_dir: Path) -> str:
    """The run's Markdown artifact: what was decided, why, and where to look."""
    details = outcome.get("details") or {}
    status = outcome["status"]
    lines = [f"# {EMOJI.get(status, '')} batch `{outcome['batch_id']}`: {status}", "",
             f"- production: **{outcome.get('production') or 'none'}**"
             + (f" (new version {outcome['version']})" if outcome.get("version") else ""),
             f"- {validation_headline(details)}", f"- {drift_headline(details)}"]
    if details.get("champion_moved"):
        moved = details["champion_moved"]
        lines.append(f"- production moved {moved['from']} → {moved['to']} while this run waited; judged against {moved['to']}")
    attempts = details.get("attempts") or []
    if attempts:
        lines.append(f"- attempts: {len(attempts)} ("
                     + ", ".join(f"{a['attempt']}: {'pass' if a['promote'] else 'rejected'}, {a['seconds']:.0f} s"
                                 for a in attempts) + ")")
    flips = details.get("flips") or {}
    if flips.get("negative_rate") is not None:
        lines.append(f"- negative flips: {flips['negative']} old rows right before, wrong now "
                     f"({flips['negative_rate']:.2%}); positive {flips['positive']}")
    if status == "rejected" and details.get("pending"):
        lines.append(f"- still pending, carried into the next retrain: {', '.join(details['pending'])}")
    lines += ["", "## Reasons", *[f"- {r}" for r in outcome.get("reasons", [])]]
    if details.get("gate_table"):
        lines += ["", "## Gate, per slice", details["gate_table"]]
    lines += ["", "## Reports", *[f"- {name}: `{path}`" for name, path in report_paths(outcome, run_dir).items()]]
    return "\n".join(lines)


def post_json(url: str, payload: dict, timeout: float = TIMEOUT_SECONDS) -> int:
    """POST `payload` as JSON; returns the HTTP status, raises WebhookError unless 2xx."""
    request = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "ratchet"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the operator's URL)
            return response.status
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"webhook {url} answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookError(f"webhook {url} unreachable: {getattr(exc, 'reason', exc)}") from exc


# --- Prefect edge ------------------------------------------------------------------
from prefect import task  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402


@task(name="webhook", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def webhook_task(url: str, payload: dict) -> int:
    return post_json(url, payload)


def publish(outcome: dict, run_dir: Path, webhook_url: str = "") -> None:
    """Artifacts on the current flow run, then the webhook. Called after decision.json is
    written: the decision stands even if the webhook stays down (it is logged, not raised,
    so a notification outage never turns a promotion into a failed run)."""
    from prefect import get_run_logger
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
    from prefect.runtime import flow_run

    create_markdown_artifact(markdown=markdown(outcome, run_dir), key="ratchet-decision",
                             description=f"batch {outcome['batch_id']}: {outcome['status']}")
    rows = gate_rows(outcome)
    if rows:
        create_table_artifact(table=rows, key="ratchet-gate", description="gate checks per slice")
    html = report_paths(outcome, run_dir).get("drift_html")
    if html:
        create_link_artifact(link=Path(html).resolve().as_uri(), link_text="drift report (HTML)",
                             key="ratchet-drift-report", description=html)
    if webhook_url:
        try:
            webhook_task(webhook_url, summary(outcome, run_dir, flow_run.id))
        except WebhookError as exc:
            get_run_logger().error("decision not notified: %s", exc)
