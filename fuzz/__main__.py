"""``python -m fuzz``: every parser of untrusted input under atheris, one process each.

    python -m fuzz [--runs N] [--targets a,b] [--max-len BYTES] [--jobs J] [--keep]

``--runs`` inputs in all, split evenly across the targets (libFuzzer counts the seeds
it starts from among them). Each target runs in a process of its own
(``fuzz.worker``) with a corpus seeded in a temporary directory (``fuzz.seeds``), a
10 s limit per input (longer is a hang) and 2 GiB of memory; a target stops at its first
crash or hang. Prints one line per target (inputs executed, crashes, hangs, seconds)
and a total. Exit status 1 on any crash or hang, after showing the input and the
traceback; the work directory is then kept.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fuzz.seeds import seeds
from fuzz.targets import TARGETS

REPO = Path(__file__).resolve().parents[1]
TARGET_NAMES = tuple(TARGETS)
TIMEOUT_S = 10  # one input running longer is a hang
RSS_LIMIT_MB = 2048
SHOWN_INPUT_CHARS = 400  # of a crashing input's repr
_DONE_RE = re.compile(r"^Done (\d+) runs in (\d+) second", re.MULTILINE)
_STATUS_RE = re.compile(r"^#(\d+)\s", re.MULTILINE)
_TRACEBACK_START = "=== Uncaught Python exception: ==="


@dataclass
class Result:
    """What one target's run did."""

    name: str
    inputs: int = 0
    seconds: float = 0.0
    crashes: list[Path] = field(default_factory=list)  # libFuzzer artifacts
    hangs: list[Path] = field(default_factory=list)
    failure: str = ""  # the worker failed with no artifact (it did not start, ...)
    log: str = ""

    @property
    def ok(self) -> bool:
        """No crash, no hang, no failure."""
        return not (self.crashes or self.hangs or self.failure)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fuzz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=1_000_000, help="inputs in all, split evenly")
    p.add_argument(
        "--targets",
        default=",".join(TARGET_NAMES),
        help=f"comma-separated targets (default all: {','.join(TARGET_NAMES)})",
    )
    p.add_argument("--max-len", type=int, default=16384, help="largest input, bytes")
    p.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    p.add_argument("--keep", action="store_true", help="keep the work directory (corpora)")
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(args.targets) - set(TARGET_NAMES))
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGET_NAMES)}")
    if args.runs < len(args.targets) or args.max_len < 1 or args.jobs < 1:
        p.error("--runs must be at least one per target; --max-len and --jobs positive")
    return args


def _seed(name: str, corpus: Path) -> int:
    """Write target ``name``'s seeds into ``corpus``; how many."""
    found = seeds(name)
    corpus.mkdir(parents=True)
    for i, data in enumerate(found):
        (corpus / f"seed-{i:04d}").write_bytes(data)
    return len(found)


def _fuzz(name: str, runs: int, max_len: int, work: Path) -> Result:
    """Run target ``name`` for ``runs`` inputs in a worker process."""
    base = work / name
    corpus, artifacts, tmp = base / "corpus", base / "artifacts", base / "tmp"
    _seed(name, corpus)
    artifacts.mkdir()
    tmp.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "fuzz.worker",
        name,
        f"-runs={runs}",
        f"-timeout={TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={max_len}",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)}
    started = time.monotonic()
    log_path = base / "log"
    with log_path.open("wb") as log:
        code = subprocess.run(  # noqa: S603 - our own interpreter and module
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False
        ).returncode
    result = Result(name, seconds=time.monotonic() - started)
    result.log = log_path.read_text(encoding="utf-8", errors="replace")
    done = _DONE_RE.search(result.log)
    statuses = _STATUS_RE.findall(result.log)
    result.inputs = int(done.group(1)) if done else int(statuses[-1]) if statuses else 0
    for artifact in sorted(artifacts.iterdir()):
        if artifact.name.startswith("timeout-"):
            result.hangs.append(artifact)
        elif artifact.name.startswith(("crash-", "oom-", "leak-")):
            result.crashes.append(artifact)
    if code != 0 and result.ok:
        result.failure = f"the worker exited with status {code}"
    print(
        f"{name}: {result.inputs} inputs, {len(result.crashes) + bool(result.failure)} "
        f"crashes, {len(result.hangs)} hangs ({result.seconds:.0f} s)",
        flush=True,
    )
    return result


def _traceback(log: str) -> str:
    """The Python traceback atheris printed for a crash, if any."""
    start = log.find(_TRACEBACK_START)
    if start < 0:
        return ""
    lines = []
    for line in log[start:].splitlines()[1:]:
        if line.startswith(("==", "MS:", "artifact_prefix")):
            break
        lines.append(line)
    return "\n".join(lines)


def _report(result: Result) -> None:
    """The crashing and hanging inputs of a failed target, with the traceback."""
    print(f"\n--- {result.name}")
    for kind, artifacts in (("crash", result.crashes), ("hang", result.hangs)):
        for artifact in artifacts:
            text = repr(artifact.read_bytes())
            if len(text) > SHOWN_INPUT_CHARS:
                text = text[:SHOWN_INPUT_CHARS] + f"... ({artifact.stat().st_size} bytes)"
            print(f"{kind} input ({artifact}):\n  {text}")
    shown = _traceback(result.log)
    if shown:
        print(shown)
    elif result.failure or result.hangs:
        if result.failure:
            print(result.failure)
        print("\n".join(result.log.splitlines()[-25:]))


def main(argv: list[str] | None = None) -> int:
    """Fuzz the chosen targets; 0 when none crashed or hung."""
    args = _parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="baomi-fuzz-"))
    share, extra = divmod(args.runs, len(args.targets))
    plan = [(name, share + (i < extra)) for i, name in enumerate(args.targets)]
    print(f"fuzzing {len(plan)} targets, {args.runs} inputs in all, in {work}", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda step: _fuzz(step[0], step[1], args.max_len, work), plan))
    elapsed = time.monotonic() - started
    failed = [r for r in results if not r.ok]
    for r in failed:
        _report(r)
    print(f"\n{'target':<15}{'inputs':>10}{'crashes':>9}{'hangs':>7}{'seconds':>9}")
    for r in results:
        crashes = len(r.crashes) + bool(r.failure)
        print(f"{r.name:<15}{r.inputs:>10}{crashes:>9}{len(r.hangs):>7}{r.seconds:>9.0f}")
    crashes = sum(len(r.crashes) + bool(r.failure) for r in results)
    hangs = sum(len(r.hangs) for r in results)
    inputs = sum(r.inputs for r in results)
    print(f"{'total':<15}{inputs:>10}{crashes:>9}{hangs:>7}{elapsed:>9.0f}")
    if failed or args.keep:
        print(f"\ncorpora, logs and inputs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
