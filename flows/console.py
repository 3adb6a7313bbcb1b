"""What a person sees during `make run`: one line per stage of each batch, the log in a file.

`LogRoute` sends every log record (Prefect, transformers, DVC, the stage functions), stray
prints, warnings and progress bars to one file under reports/; `BatchLines` prints what
each batch went through on the terminal it kept. `python -m flows.console repro` runs
`dvc repro` with its output in that file and prints one summary line. `--verbose`
(`make run VERBOSE=1`) skips all of it and shows the logs as they come.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s"  # Prefect's, without Prefect


def log_path(workspace: str | Path = ".") -> Path:
    """reports/demo-<UTC time>.log in the workspace."""
    return Path(workspace) / "reports" / f"demo-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}.log"


def _is_console(handler: logging.Handler) -> bool:
    """A handler writing to a terminal stream (Prefect's console handler, transformers'
    default one), not a file, nor pytest's capture."""
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and not type(handler).__module__.startswith("_pytest"))


def _loggers() -> list[logging.Logger]:
    named = [v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    return [logging.getLogger(), *named]


class LogRoute:
    """Every log line, print and warning of this process goes to `path` until `stop()`;
    `start()` returns the terminal stream the caller keeps writing to.

    Call it after Prefect is imported (Prefect configures its console handler then): the
    console handlers found are taken off and the file takes their place, keeping their
    formatter, so the file reads like the terminal would have. Progress bars are off."""

    active: LogRoute | None = None  # the route in place, for whoever must undo it (the tests)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._removed: list[tuple[logging.Logger, int, logging.Handler]] = []  # put back where they were

    def start(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._handler = logging.StreamHandler(self._file)
        self._bars = _progress_bars(on=False)
        root = logging.getLogger()
        for logger in _loggers():
            consoles = [(i, h) for i, h in enumerate(logger.handlers) if _is_console(h)]
            for index, handler in consoles:
                self._removed.append((logger, index, handler))
                self._handler.formatter = self._handler.formatter or handler.formatter
            for _, handler in consoles:
                logger.removeHandler(handler)
            if logger is root or (consoles and not logger.propagate):
                logger.addHandler(self._handler)
        self._handler.formatter = self._handler.formatter or logging.Formatter(FORMAT)
        self.terminal, self._stderr = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self._file
        LogRoute.active = self
        return self.terminal

    def stop(self) -> None:
        if sys.stdout is self._file:  # a test runner may have put its own back already
            sys.stdout = self.terminal
        if sys.stderr is self._file:
            sys.stderr = self._stderr
        for logger in _loggers():  # ours, and any handler made meanwhile on the file
            for handler in [h for h in logger.handlers if getattr(h, "stream", None) is self._file]:
                logger.removeHandler(handler)
        for logger, index, handler in self._removed:
            logger.handlers.insert(index, handler)
        self._removed.clear()
        _progress_bars(on=self._bars)
        self._file.close()
        LogRoute.active = None

    def __enter__(self) -> TextIO:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _progress_bars(on: bool) -> bool:
    """transformers' (and so huggingface_hub's) progress bars on or off; whether they were
    on. Importing it also gives transformers its console handler, for the route to move."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar() if on else hf_logging.disable_progress_bar()
    return was


WIDE = 160  # longer lines (a gate's reasons) are cut: decision.json and the log have them whole


class BatchLines:
    """One line per stage of each batch: validated, drift, each attempt, the decision."""

    def __init__(self, out: TextIO, total: int | None = None):
        self.out, self.total, self.count, self.started = out, total, 0, time.monotonic()

    def __call__(self, batch: str, outcome: dict | None = None) -> None:
        """Called with the batch's file name before it runs, and with its outcome after."""
        if outcome is None:
            self.count, self.started = self.count + 1, time.monotonic()
            self._line(f"[{self.count}{f'/{self.total}' if self.total else ''}] {Path(batch).stem}")
            return
        seconds = time.monotonic() - self.started
        for line in [*stage_lines(outcome), f"{decision_line(outcome)} ({seconds:.0f} s)"]:
            self._line(f"  {line if len(line) <= WIDE else line[:WIDE - 1] + '…'}")

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def stage_lines(outcome: dict) -> list[str]:
    """What validation, drift and each attempt said, one short line each, from a run's outcome."""
    details, lines = outcome.get("details") or {}, []
    checked = details.get("validation")
    if checked:
        counts = checked["counts"]
        lines.append(f"validated: {counts['rows']} rows {checked['verdict'].replace('_', ' ')}, "
                     f"{counts['dropped_bad_rows']} dropped, {counts['kept_rows']} go on")
    drift, policy = details.get("drift"), details.get("policy")
    if drift:
        verdict = f"drifted ({', '.join(drift['signals'])})" if drift["drifted"] else "no drift"
        then = f"; {'retrain' if policy['retrain'] else 'wait'}: {policy['reason']}" if policy else ""
        lines.append(f"drift: {verdict}{then}")
    for a in details.get("attempts") or []:
        train = a["train"]
        gate = "passed" if a["promote"] else f"rejected: {(a['reasons'] or ['-'])[0]}"
        if train.get("stats_rows"):  # train.stats_head: rows added to the class statistics, no optimizer step
            learned = f"added {train['stats_rows']} rows to the class statistics"
        else:
            learned = (f"trained on {train['new_rows'] + train['replay_rows']} rows ({train['new_rows']} new, "
                       f"{train['replay_rows']} replay), {train['epochs']} epoch(s)")
        lines.append(f"attempt {a['attempt']}: {learned}, {train['seconds']:.0f} s; gate {gate}")
    return lines


def decision_line(outcome: dict) -> str:
    """The run's outcome and production after it."""
    status, production = outcome["status"], outcome["production"]
    if status == "promoted":
        return f"promoted {production}: production now"
    if status == "rejected":
        return f"rejected: production stays {production}, the batch stays pending"
    reason = (outcome.get("reasons") or [""])[0].splitlines()[0] if outcome.get("reasons") else ""
    return f"{status}: {reason}" if reason else status


STAGE_RAN = re.compile(r"^Running stage '")
STAGE_KEPT = re.compile(r"^Stage '.*' didn't change, skipping")


def repro(log: str | Path, out: TextIO | None = None, command: list[str] | None = None) -> int:
    """Run `dvc repro` (or `command`) with its output appended to `log`; one line on `out`
    saying how it went (the last lines of its output too when it failed); its exit code."""
    log, out = Path(log), out or sys.stdout
    command = command or [sys.executable, "-m", "dvc", "repro"]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "ab") as file:
        file.write(f"\n$ {' '.join(command)}\n".encode())
        file.flush()
        offset = file.tell()
        code = subprocess.run(command, stdout=file, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - started
    lines = log.read_bytes()[offset:].decode("utf-8", errors="replace").splitlines()
    ran, kept = (sum(bool(p.match(line)) for line in lines) for p in (STAGE_RAN, STAGE_KEPT))
    if code == 0:
        out.write(f"dvc repro: {ran} stage(s) run, {kept} unchanged, in {seconds:.0f} s (log: {log})\n")
    else:
        out.write(f"dvc repro failed (exit {code}) after {seconds:.0f} s; the last lines of {log}:\n")
        out.writelines(f"  {line}\n" for line in lines[-5:])
    out.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.console", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("repro", help="`dvc repro`, its output in the log, one line here")
    run.add_argument("--log", type=Path, default=None, help="log file (default reports/demo-<time>.log)")
    run.add_argument("--verbose", action="store_true", help="show dvc's output here instead")
    args = parser.parse_args(argv)
    if args.verbose:
        return subprocess.run([sys.executable, "-m", "dvc", "repro"]).returncode
    return repro(args.log or log_path())


if __name__ == "__main__":
    sys.exit(main())
