"""A file-guard agent in a process of its own, for tests that SIGKILL it.

``python -m tests.guardian_agent --root DIR --state DIR --out FILE [--slow NAME]
[--hang-on-gap]``
runs a ``PermissionGuard`` with a guardian over ``DIR`` that allows every open, but
takes ``SLOW_SECONDS`` over any file named ``NAME``. It writes JSON lines to ``FILE``:
``ready`` (with its guardian's pid) once guarding, ``deciding`` when a slow decision
starts, each ``tamper`` (kind, detail) and ``gap`` (the records). With
``--hang-on-gap`` it writes ``gap`` and then never returns from ``on_gap``: it has
adopted the guardian's group and not yet told it the gap is recorded, the instant a
kill test aims at. SIGTERM stops it cleanly (the guardian holds).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from agent.sensors.files.guardian import GapProgress
from agent.sensors.files.permission import Access, PermissionGuard

SLOW_SECONDS = 60.0  # a decision this slow outlives the test's kill -9
DEADLINE = 120.0  # seconds: longer than a slow decision, so only the kill ends it


def main() -> None:
    """Guard until SIGTERM."""
    p = argparse.ArgumentParser()
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--slow", default="")
    p.add_argument("--hang-on-gap", action="store_true")
    args = p.parse_args()
    out = args.out.open("a", buffering=1)
    lock = threading.Lock()

    def emit(record: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")

    def decide(access: Access) -> bool:
        if args.slow and access.path.endswith("/" + args.slow):
            emit({"event": "deciding", "path": access.path})
            time.sleep(SLOW_SECONDS)
        return True

    def on_gap(records: list[dict[str, Any]], progress: GapProgress) -> None:
        emit({"event": "gap", "records": records, "recorded_before": progress.recorded})
        progress.one_more()
        while args.hang_on_gap:
            time.sleep(SLOW_SECONDS)

    guard = PermissionGuard(
        [args.root],
        decide,
        deadline=DEADLINE,
        guardian_dir=args.state,
        on_gap=on_gap,
        on_tamper=lambda kind, detail: emit({"event": "tamper", "kind": kind, "detail": detail}),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    guard.start()
    emit({"event": "ready", "guardian": guard.guardian_pid})
    while not stop.wait(0.05):
        pass
    guard.stop()
    emit({"event": "stopped"})


if __name__ == "__main__":
    main()
