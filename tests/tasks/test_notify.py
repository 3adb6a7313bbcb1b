"""Notify: the decision rendered for the Prefect UI, and POSTed to a webhook on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from webhook_receiver import Hook

from flows.notify import WebhookError, markdown, post_json, summary

OUTCOME = {
    "status": "promoted", "batch_id": "b-123", "run_id": "20261129T000000-b-123", "version": "v0002",
    "production": "v0002", "exit_code": 0, "reasons": ["every old slice non-inferior"],
    "details": {
        "validation": {"passed": True, "rows": 60, "failures": []},
        "drift": {"drifted": True, "reason": "2 of 4 signals drifted", "new_labels": ["food"],
                  "html_path": "/ws/reports/r/drift.html", "json_path": "/ws/reports/r/drift.json"},
        "gate": {"promote": True, "checks": [
            {"name": "slice:A", "kind": "old_slice", "rows": 36, "champion": 0.9, "candidate": 0.92,
             "lower_bound": -0.01, "p_value": 0.001, "threshold": -0.05, "verdict": "pass"}]},
        "gate_table": "| check | rows |\n|---|---|\n| slice:A | 36 |",
    },
}


@pytest.fixture
def hook():
    got = Hook()
    yield got
    got.close()


def test_markdown_has_headlines_gate_table_reports_and_version():
    text = markdown(OUTCOME, Path("/ws/reports/r"))
    assert "promoted" in text and "v0002" in text
    assert "validation: passed (60 rows)" in text
    assert "drift: DRIFT (2 of 4 signals drifted); new labels: food" in text
    assert "| slice:A | 36 |" in text
    assert "/ws/reports/r/drift.html" in text and "/ws/reports/r/decision.json" in text


def test_quarantined_outcome_renders_without_gate_or_drift():
    outcome = {"status": "quarantined", "batch_id": "b-9", "run_id": "r", "production": None, "reasons": ["FAIL x"],
               "details": {"validation": {"passed": False, "rows": 3, "failures": [{"expectation": "min_rows"}]},
                           "quarantine": "/ws/data/quarantine/b-9"}}
    text = markdown(outcome, Path("/ws/reports/r"))
    assert "validation: FAILED 1 check(s): min_rows" in text and "drift: not run" in text
    assert summary(outcome, Path("/ws/reports/r"))["reports"]["quarantine"] == "/ws/data/quarantine/b-9"


def test_webhook_receives_the_json_summary(hook):
    payload = summary(OUTCOME, Path("/ws/reports/r"), flow_run_id="abc")
    assert post_json(hook.url, payload) == 204
    (got,) = hook.received
    assert got["event"] == "ratchet.decision" and got["status"] == "promoted" and got["version"] == "v0002"
    assert got["gate"] == [{"name": "slice:A", "verdict": "pass", "champion": 0.9, "candidate": 0.92}]
    assert got["reports"]["drift_html"] == "/ws/reports/r/drift.html" and got["flow_run_id"] == "abc"


def test_webhook_errors_name_the_url_and_status():
    hook = Hook(fail=1)
    try:
        with pytest.raises(WebhookError, match=r"answered 500"):
            post_json(hook.url, {"x": 1})
    finally:
        hook.close()
    with pytest.raises(WebhookError, match="unreachable"):
        post_json(hook.url, {"x": 1}, timeout=2)  # closed: nothing listens any more


def test_webhook_task_retries_until_the_hook_answers(prefect_server):
    from prefect import flow

    from flows.notify import webhook_task

    hook = Hook(fail=2)

    @flow
    def send():
        return webhook_task.with_options(retry_delay_seconds=0)(hook.url, {"n": 1})

    try:
        assert send() == 204
        assert hook.received == [{"n": 1}]
    finally:
        hook.close()
