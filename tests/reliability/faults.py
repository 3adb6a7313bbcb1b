"""Kill points for the reliability drills, armed inside a child `ratchet` process.

`python faults.py POINT ratchet-args...` runs the real CLI; when the flow reaches POINT
the process sends itself SIGKILL: no `finally`, no `atexit`, no flushing of Python
buffers, exactly what the OOM killer or a pulled plug leaves behind. Nothing is skipped
or faked before that point; the patch only decides where the process dies.

- before_alias_move   the new version is renamed into models/versions/, production not yet moved
- alias_write         the new aliases.json is written and fsynced to its temporary file, not yet renamed
- after_alias_write   aliases.json replaced; the `production` link and history.jsonl not yet updated
"""

from __future__ import annotations

import os
import signal
import sys

POINTS = ("before_alias_move", "alias_write", "after_alias_write")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    from tasks.registry import store as registry
    if point == "before_alias_move":
        registry.Registry.promote = lambda self, version, reason=None: die()
        return
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r}; one of {POINTS}")
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        is_alias = os.path.basename(os.fspath(dst)) == "aliases.json"
        if is_alias and point == "alias_write":
            die()
        real_replace(src, dst, *args, **kwargs)
        if is_alias and point == "after_alias_write":
            die()

    registry.os.replace = replace  # the module's `os` is the os module: the whole process sees it


if __name__ == "__main__":
    from flows.cli import main

    arm(sys.argv[1])
    sys.argv = ["ratchet", *sys.argv[2:]]
    main()
