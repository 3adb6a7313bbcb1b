"""What a person sees during `make run` (flows/console.py): the logs in a file, a line per
stage of each batch, `--verbose` showing the logs, and `dvc repro` summed up in one line."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.console import BatchLines, LogRoute, decision_line, main, repro, stage_lines

runner = CliRunner()


def outcome(status="promoted", production="v0001", attempts=1):
    """A run's outcome as the retrain flow returns it, with only what the lines read."""
    return {"batch": "01_banking.csv", "status": status, "production": production, "reasons": ["why it went so"],
            "details": {
                "validation": {"verdict": "accepted", "counts": {"rows": 120, "dropped_bad_rows": 2, "kept_rows": 118}},
                "drift": {"drifted": True, "signals": ["label", "embedding[all]"]},
                "policy": {"retrain": True, "reason": "drift: retrain now"},
                "attempts": [{"attempt": i + 1, "promote": i == attempts - 1, "reasons": [f"reason {i + 1}"],
                              "train": {"new_rows": 100, "replay_rows": 50, "epochs": 3, "seconds": 12.3}}
                             for i in range(attempts)],
                "candidate_scores": {"slices": {"banking": {"accuracy": 0.9}}}}}


@pytest.fixture
def no_route_left():
    yield
    if LogRoute.active:  # the demo leaves its route in place for the process; a test ends it
        LogRoute.active.stop()


def test_stage_lines_say_what_each_stage_decided():
    lines = stage_lines(outcome(attempts=2))
    assert lines == [
        "validated: 120 rows accepted, 2 dropped, 118 go on",
        "drift: drifted (label, embedding[all]); retrain: drift: retrain now",
        "attempt 1: trained on 150 rows (100 new, 50 replay), 3 epoch(s), 12 s; gate rejected: reason 1",
        "attempt 2: trained on 150 rows (100 new, 50 replay), 3 epoch(s), 12 s; gate passed",
    ]
    assert decision_line(outcome()) == "promoted v0001: production now"
    assert decision_line(outcome("rejected")) == "rejected: production stays v0001, the batch stays pending"
    skipped = {"status": "skipped", "production": "v0001", "reasons": ["batch b-1 was already accepted\nmore"]}
    assert stage_lines(skipped) == [] and decision_line(skipped) == "skipped: batch b-1 was already accepted"


def test_batch_lines_print_a_header_then_a_line_per_stage():
    out = io.StringIO()
    lines = BatchLines(out, total=2)
    lines("01_banking.csv")
    assert out.getvalue() == "[1/2] 01_banking\n"  # before the run: progress at once
    lines("01_banking.csv", outcome())
    printed = out.getvalue().splitlines()
    assert len(printed) == 1 + 3 + 1 and all(line.startswith("  ") for line in printed[1:])
    assert printed[-1].startswith("  promoted v0001: production now (")


def test_route_sends_logs_prints_and_warnings_to_the_file(tmp_path, capfd):
    path = tmp_path / "reports" / "demo.log"
    stray = logging.getLogger("ratchet.test.console")
    before = logging.getLogger().handlers[:]
    with LogRoute(path) as terminal:
        stray.warning("a library's warning")
        logging.getLogger("transformers").warning("LOAD REPORT: classifier.weight MISSING")
        print("a stray print")
        sys.stderr.write("a progress bar\n")
        terminal.write("for the person\n")
    out, err = capfd.readouterr()
    assert out == "for the person\n" and err == ""
    log = path.read_text()
    for text in ("a library's warning", "LOAD REPORT", "a stray print", "a progress bar"):
        assert text in log
    assert logging.getLogger().handlers == before  # put back as it was
    stray.warning("after the route")
    assert "after the route" not in path.read_text()


def test_route_takes_prefect_flow_logs_to_the_file(tmp_path, capfd, prefect_server):
    from prefect import flow, get_run_logger

    @flow(name="console-route")
    def noisy() -> int:
        get_run_logger().info("a flow's log line")
        return 1

    path = tmp_path / "demo.log"
    with LogRoute(path):
        assert noisy() == 1
    out, err = capfd.readouterr()
    assert "a flow's log line" not in out + err and "Beginning flow run" not in out + err
    log = path.read_text()
    assert "a flow's log line" in log and "Finished in state Completed()" in log


SEEN = {}


def fake_stream(domains, workspace, overrides, on_batch):
    """The stream flow without training: logs like Prefect, reports one batch."""
    SEEN["consoles"] = [n for n in map(lambda h: type(h).__name__, logging.getLogger().handlers)
                        if n == "PrefectConsoleHandler"]
    logging.getLogger("prefect").warning("Beginning flow run 'noisy'")
    print("a print in the flow", file=sys.stderr)
    on_batch("01_banking.csv", None)
    done = outcome()
    on_batch("01_banking.csv", done)
    return [done]


def test_demo_prints_lines_per_batch_and_the_table_and_logs_to_a_file(tmp_path, monkeypatch, no_route_left):
    import flows.stream

    monkeypatch.setattr(flows.stream, "stream_clinc150", fake_stream)
    log = tmp_path / "reports" / "demo-1.log"
    result = runner.invoke(app, ["demo", "--domains", "1", "--workspace", str(tmp_path), "--log", str(log)])
    assert result.exit_code == 0, result.output
    printed = result.output.splitlines()
    assert printed[0] == f"logs: {log} (--verbose shows them here)"
    assert "[1/1] 01_banking" in printed and "  promoted v0001: production now (0 s)" in printed
    assert "Beginning flow run" not in result.output and "a print in the flow" not in result.output
    assert any("0.900" in line for line in printed) and printed[-1].startswith("summary:")
    assert len(printed) < 40 and SEEN["consoles"] == []
    assert "Beginning flow run 'noisy'" in log.read_text() and "a print in the flow" in log.read_text()


def test_demo_verbose_shows_the_logs_and_writes_no_file(tmp_path, monkeypatch, no_route_left):
    import flows.stream

    monkeypatch.setattr(flows.stream, "stream_clinc150", fake_stream)
    result = runner.invoke(app, ["demo", "--domains", "1", "--workspace", str(tmp_path), "--verbose"])
    assert result.exit_code == 0, result.output
    assert LogRoute.active is None
    assert SEEN["consoles"] == ["PrefectConsoleHandler"]  # Prefect's logs on the terminal, as without the route
    assert "a print in the flow" in result.output
    assert "[1/1] 01_banking" in result.output
    assert not list((tmp_path / "reports").glob("demo-*.log"))


def test_repro_sums_up_a_success_in_one_line(tmp_path):
    log, out = tmp_path / "reports" / "demo.log", io.StringIO()
    script = "print(\"Running stage 'intake':\"); print(\"Stage 'split' didn't change, skipping\")"
    assert repro(log, out, [sys.executable, "-c", script]) == 0
    assert re.fullmatch(rf"dvc repro: 1 stage\(s\) run, 1 unchanged, in \d+ s \(log: {re.escape(str(log))}\)\n",
                        out.getvalue())
    assert "Running stage 'intake'" in log.read_text()


def test_repro_failure_shows_the_last_lines_and_its_exit_code(tmp_path):
    log, out = tmp_path / "demo.log", io.StringIO()
    log.write_text("the demo's own lines\n")
    script = "import sys; [print(f'line {i}') for i in range(9)]; sys.exit('ERROR: stage promote failed')"
    assert repro(log, out, [sys.executable, "-c", script]) == 1
    printed = out.getvalue().splitlines()
    assert printed[0].startswith("dvc repro failed (exit 1) after ")
    assert printed[1:] == ["  line 5", "  line 6", "  line 7", "  line 8", "  ERROR: stage promote failed"]
    assert log.read_text().startswith("the demo's own lines\n")  # appended to


def test_repro_entry_point_takes_the_log_path(tmp_path, monkeypatch, capsys):
    import flows.console

    seen = []

    def fake_repro(log):
        seen.append(log)
        return 0

    monkeypatch.setattr(flows.console, "repro", fake_repro)
    assert main(["repro", "--log", str(tmp_path / "x.log")]) == 0
    assert seen == [tmp_path / "x.log"]
