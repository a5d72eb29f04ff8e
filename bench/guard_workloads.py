"""Protected opens on the paths real work takes: many files, new processes, repeats.

``bench.fanotify`` measures one process re-opening 64 files, which the guard answers
from its C table after the first pass. Real work looks different: a ``grep -r``, a
backup, an indexer or a shell loop running ``cat`` opens many distinct files once
each, often from a new process each time. Here 2,000 labelled files in 20
directories (the policy, subjects and labels of ``bench.fanotify``) are opened by
the same small C opener, three ways, each measured per open:

cold        a new process opens each of the 2,000 files once, under a guard that
            has decided nothing yet (a fresh agent file guard per round);
new process another new process of the same executable does it again, right after;
repeats     one process opens each file once untimed, then five more times, timed;
reading     a new process opens each file, reads it to its end and closes it, as
            cat, grep or a backup do (no target: the C responder answers opens
            only, while the guard is also asked before each read, for writes);
short processes
            100 of the files, each opened once by a process of its own, as a shell
            loop running cat does (no target: the first open of every new process
            is decided in Python, where it is vouched for).

Against: plain opens (nothing listening) and ``fanotify_allow`` (a minimal C
responder marking the same 20 directories; the kernel round-trip floor). Also, for
information, the same responder making the three look-ups the agent's C loop makes
for an access it answers from its table (fstat of the event fd, fstat of the opener's
/proc directory, a read of the proc connector after each read of the group; see
fanotify_allow.c): what part of the agent's cost over the floor those checks are. Everything
pinned to one CPU and, separately, with the scheduler free; the median of ``ROUNDS``
interleaved rounds is reported, with the ratio agent / C for each workload: the median
of each round's ratio (the agent and C measured seconds apart, so a machine that
drifts between rounds moves both). Every open the agent answered must be in its
spooled record.

``python -m bench.guard_workloads`` prints the figures; ``run()`` returns them.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.fanotify import (
    RESPONDER_C,
    _Agent,
    _build_tools,
    _compile,
    _open_loop,
    _under_c_responder,
)
from bench.proc import BenchError

DIRECTORIES = 20
FILES = 2_000
REPEATS = 5
SHORT_PROCESSES = 100  # files opened each by a new process of its own
ROUNDS = 5
TARGETS = {"cold": 3.0, "new process": 1.3, "repeats": 1.15}  # agent / C, same CPU

Workloads = dict[str, float]  # workload -> µs per open


def _workloads(opener: Path, files: list[str]) -> Callable[[], Workloads]:
    def measure() -> Workloads:
        return {
            "cold": _open_loop(opener, 0, len(files), files),
            "new process": _open_loop(opener, 0, len(files), files),
            "repeats": _open_loop(opener, len(files), REPEATS * len(files), files),
            "reading": _open_loop(opener, 0, len(files), files, reads=True),
            "short processes": statistics.mean(
                _open_loop(opener, 0, 1, [f]) for f in files[:: len(files) // SHORT_PROCESSES]
            ),
        }

    return measure


def _round(
    measure: Callable[[], Workloads],
    *,
    responders: tuple[Path, Path],
    top: Path,
    dirs: list[Path],
    agent: _Agent,
    into: dict[str, list[Workloads]],
) -> None:
    responder, with_checks = responders
    into["plain"].append(measure())
    into["c"].append(_under_c_responder(responder, dirs, measure))
    into["checks"].append(_under_c_responder(with_checks, dirs, measure))
    into["agent"].append(agent.measure(top, measure))


def run() -> list[tuple[str, float, str]]:
    """Measure; (figure, value, unit and target) rows."""
    if os.geteuid() != 0:
        raise BenchError("fanotify permission events need root (CAP_SYS_ADMIN)")
    work = Path(tempfile.mkdtemp(prefix="baomi-bench-workloads-"))
    affinity = os.sched_getaffinity(0)
    same: dict[str, list[Workloads]] = {"plain": [], "c": [], "checks": [], "agent": []}
    free: dict[str, list[Workloads]] = {"plain": [], "c": [], "checks": [], "agent": []}
    try:
        opener, responder = _build_tools(work)
        with_checks = work / "fanotify_allow_checks"
        _compile(RESPONDER_C, with_checks, "-DAGENT_CHECKS")
        responders = (responder, with_checks)
        top = work / "files"
        dirs = [top / f"d{d:02d}" for d in range(DIRECTORIES)]
        files: list[str] = []
        for d in dirs:
            d.mkdir(parents=True)
            for i in range(FILES // DIRECTORIES):
                f = d / f"f{i:03d}"
                f.write_bytes(b"secret\n")
                files.append(str(f))
        agent = _Agent(work, top, opener, files)
        measure = _workloads(opener, files)
        for _ in range(ROUNDS):
            os.sched_setaffinity(0, {max(affinity)})
            try:
                _round(measure, responders=responders, top=top, dirs=dirs, agent=agent, into=same)
            finally:
                os.sched_setaffinity(0, affinity)
            _round(measure, responders=responders, top=top, dirs=dirs, agent=agent, into=free)
        _, opens_recorded = agent.recorded()
    finally:
        os.sched_setaffinity(0, affinity)
        shutil.rmtree(work, ignore_errors=True)
    opens_made = 2 * ROUNDS * (3 * FILES + (1 + REPEATS) * FILES + SHORT_PROCESSES)
    rows: list[tuple[str, float, str]] = []
    for label, got in (("same CPU", same), ("free CPUs", free)):
        for workload, target_ratio in {**TARGETS, "reading": None, "short processes": None}.items():
            plain = statistics.median(w[workload] for w in got["plain"])
            c = statistics.median(w[workload] for w in got["c"])
            c_checks = statistics.median(w[workload] for w in got["checks"])
            agent_us = statistics.median(w[workload] for w in got["agent"])
            ratio = statistics.median(
                a[workload] / cw[workload] for a, cw in zip(got["agent"], got["c"], strict=True)
            )
            rows.append(
                (
                    f"guard {workload}, {label}: plain / C / agent",
                    agent_us,
                    f"µs/open (plain {plain:.2f}, C {c:.2f}, C with checks {c_checks:.2f})",
                )
            )
            targeted = label == "same CPU" and target_ratio is not None
            target = f"x (target <= {target_ratio})" if targeted else "x"
            rows.append((f"guard {workload}: agent / C, {label}", ratio, target))
            checks = statistics.median(
                k[workload] / cw[workload] for k, cw in zip(got["checks"], got["c"], strict=True)
            )
            rows.append((f"guard {workload}: C with the agent's checks / C, {label}", checks, "x"))
    rows.append(
        (
            "guard workloads: opens not in the record",
            float(opens_made - opens_recorded),
            f"of {opens_made:,} (target 0)",
        )
    )
    return rows


def main() -> int:
    """Print the figures."""
    try:
        rows = run()
    except BenchError as e:
        print(f"workload benchmark cannot run: {e}", file=sys.stderr)
        return 2
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name.ljust(width)}  {value:10.2f}  {unit}")
    return 1 if rows[-1][1] else 0


if __name__ == "__main__":
    sys.exit(main())
