"""``python -m bench``: ingest rate, raw SQLite rate and idle agent footprint, one run.

1. The collector's durable ingest rate over concurrent mTLS agent streams with chain
   checking, driven from a separate load-generator process, measured from the first
   send until every stream's last Ack says its last event is committed.
2. A plain ``executemany`` of the same rows into the same schema with the same PRAGMAs,
   one transaction per group commit's worth of rows, and the ratio ingest / raw; also
   ``SQLiteStore.append`` alone, the store's own ceiling. After the ingest run the store
   must hold exactly the events sent, each host's chain head the hash of its last event.
3. The RSS and CPU of an idle agent, enrolled and run with the ``baomi-agent`` CLI.
4. The fleet (``bench.fleet_figure``): 1,000 simulated hosts enrolled and streaming over
   mTLS through HAProxy to ``--fleet-collectors`` collectors on one PostgreSQL; events/s
   beside a raw PostgreSQL ``COPY`` of the same rows in the same run, p99 Ack latency
   (at saturation: every host sends as fast as its window allows), and the collectors'
   RSS per 1,000 connected hosts.

``python -m bench fleet`` (or any list of parts) runs only those parts.

Exit status: 0 when everything ran (a missed target is a finding, not a failure), 1
when a step failed or the store does not hold exactly what was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import (
    agent_rss,
    console,
    decision,
    events,
    fanotify,
    fleet_figure,
    guard_workloads,
    ingest,
    netlink,
    reports,
    usb,
)
from bench.proc import BenchError

INGEST_TARGET = 100_000  # events/s end to end
AGENT_RSS_TARGET_MB = 50.0  # with the file guard on (issue: idle agent RSS <= 50 MB)
SPIKE_RATIO = 0.65  # bare grpc.aio + SQLite spike, ingest/raw


PARTS = ("ingest", "files", "devices", "reports", "console", "fleet")


@dataclass
class Row:
    """One line of the result table."""

    figure: str
    value: str
    target: str = "-"
    ratio: str = "-"
    verdict: str = "info"


def _counts(text: str) -> list[int]:
    """N[,N...], each at least 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give counts of 1 or more, e.g. 1,3")
    return counts


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hosts", type=int, default=10, help="concurrent agent streams")
    p.add_argument("--events", type=int, default=400_000, help="events in all (split by host)")
    p.add_argument("--batch", type=int, default=1000, help="events per batch")
    p.add_argument("--window", type=int, default=4, help="batches in flight per stream")
    p.add_argument("--settle", type=float, default=10.0, help="seconds before reading agent RSS")
    p.add_argument("--cpu-window", type=float, default=5.0, help="seconds of agent CPU sampling")
    p.add_argument("--skip-agent", action="store_true", help="measure ingest only")
    p.add_argument("--skip-ingest", action="store_true", help="skip ingest and the agent")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the temporary store goes (default: the system temp dir); "
        "the filesystem decides what a durable commit costs",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--skip-files", action="store_true", help="skip decision and fanotify figures")
    p.add_argument("--skip-devices", action="store_true", help="skip USB and netlink figures")
    p.add_argument("--skip-reports", action="store_true", help="skip the report build time")
    p.add_argument("--skip-console", action="store_true", help="skip the events-page query time")
    p.add_argument("--opens", type=int, default=20000, help="opens per fanotify measurement")
    p.add_argument("--skip-fleet", action="store_true", help="skip the fleet behind HAProxy")
    p.add_argument("--fleet-hosts", type=int, default=fleet_figure.HOSTS, help="simulated hosts")
    p.add_argument(
        "--fleet-events", type=int, default=fleet_figure.EVENTS, help="events per simulated host"
    )
    p.add_argument(
        "--fleet-collectors",
        type=_counts,
        default=fleet_figure.default_collector_counts(),
        metavar="N[,N...]",
        help="collectors behind HAProxy on one PostgreSQL, one fleet run per count "
        "(default: 1,3 once collectors can share a store, else 1)",
    )
    p.add_argument(
        "parts",
        nargs="*",
        metavar="PART",
        help=f"run only these parts ({', '.join(PARTS)}); default: all",
    )
    args = p.parse_args(argv)
    unknown = [part for part in args.parts if part not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}: choose from {', '.join(PARTS)}")
    if args.parts:
        for part in PARTS:
            if part not in args.parts:
                setattr(args, f"skip_{part}", True)
    return args


def _print_table(rows: list[Row]) -> None:
    head = Row("figure", "value", "target", "ratio", "result")
    cols = [(r.figure, r.value, r.target, r.ratio, r.verdict) for r in [head, *rows]]
    widths = [max(len(c[i]) for c in cols) for i in range(5)]
    print()
    for n, c in enumerate(cols):
        print(
            "  ".join(
                c[i].ljust(widths[i]) if i in (0, 2, 4) else c[i].rjust(widths[i]) for i in range(5)
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _sqlite_baselines(
    args: argparse.Namespace, workdir: Path, per_host: int
) -> tuple[float, float, dict[str, tuple[int, bytes]]]:
    """Raw executemany and ``SQLiteStore.append`` rates of the rows the collector will
    store, and each host's expected chain head."""
    rows = events.rows(args.hosts, per_host, args.batch, ingest.now_us())
    heads = ingest.expected_heads(rows)
    body = sum(len(r.body) for r in rows) / len(rows)
    raw = ingest.raw_sqlite(workdir / "raw.db", rows)
    append = ingest.store_append(workdir / "append.db", rows)
    for f in [*workdir.glob("raw.db*"), *workdir.glob("append.db*")]:
        f.unlink()
    print(
        f"raw SQLite executemany: {raw:,.0f} events/s; SQLiteStore.append alone: "
        f"{append:,.0f} events/s (event bodies of {body:.0f} bytes)",
        flush=True,
    )
    return raw, append, heads


def _agent(args: argparse.Namespace, s: ingest.Setup, ports: dict[str, int]) -> list[Row]:
    agent = agent_rss.measure(
        s.workdir,
        store_path=s.store_path,
        ca=s.pki_dir / "ca.pem",
        ports=ports,
        host_id=ingest.AGENT_HOST,
        token=s.agent_token,
        settle=args.settle,
        window=args.cpu_window,
    )
    files = agent.guarded_files
    guarding = f"guarding {files:,} labelled files" if files else "no file guard"
    print(
        f"idle agent ({guarding}): RSS {agent.agent_rss_mb:.1f} MB, {agent.rss_mb:.1f} MB "
        f"with its children (USS {agent.uss_mb:.1f} MB) in "
        f"{agent.processes} process(es), {agent.threads} threads; CPU "
        f"{agent.cpu_percent:.2f} % over {args.cpu_window:.0f} s; "
        f"{agent.delivered} of its events stored",
        flush=True,
    )
    if agent.delivered == 0:
        raise BenchError("the agent ran but none of its events reached the collector")
    return [
        Row(
            f"idle agent RSS ({guarding})",
            f"{agent.agent_rss_mb:.1f} MB",
            f"<= {AGENT_RSS_TARGET_MB:.0f} MB",
            f"{agent.agent_rss_mb / AGENT_RSS_TARGET_MB:.2f}",
            "PASS" if agent.agent_rss_mb <= AGENT_RSS_TARGET_MB else "MISS",
        ),
        Row("idle agent + guardian RSS", f"{agent.rss_mb:.1f} MB"),
        Row("idle agent CPU", f"{agent.cpu_percent:.2f} %"),
    ]


def _ingest_and_agent(args: argparse.Namespace, workdir: Path, table: list[Row]) -> bool:
    """Ingest, raw SQLite and idle agent rows; False when the store is not exact."""
    per_host = args.events // args.hosts
    sent = per_host * args.hosts
    print(
        f"work directory {workdir}; {args.hosts} hosts x {per_host:,} events, "
        f"batches of {args.batch}, window {args.window}",
        flush=True,
    )
    s = ingest.setup(workdir, args.hosts)
    raw, append, heads = _sqlite_baselines(args, workdir, per_host)

    collector, ports = ingest.start_collector(s)
    try:
        load = ingest.run_load(
            s,
            collector,
            ports["agents"],
            hosts=args.hosts,
            events_per_host=per_host,
            batch=args.batch,
            window=args.window,
        )
        print(
            f"ingest: {load.events:,} events in {load.seconds:.2f} s = {load.rate:,.0f} "
            f"events/s ({load.wire_mb_per_s:.1f} MB/s on the wire); CPU during the run: "
            f"collector {load.collector_cpu_s / load.seconds:.2f} cores, load generator "
            f"{load.loadgen_cpu_s / load.seconds:.2f} cores; "
            f"{args.hosts} mTLS handshakes took {load.connect_s:.2f} s",
            flush=True,
        )
        stored, wrong = ingest.check_stored(s.store_path, heads)
        exact = stored == sent and not wrong
        print(f"store: {stored:,} events stored, {sent:,} sent", flush=True)
        if wrong:
            print(f"FAIL: stored chain heads differ from those sent for {', '.join(wrong)}")
        table += [
            Row(
                f"durable ingest, {args.hosts} mTLS streams",
                f"{load.rate:,.0f} ev/s",
                f">= {INGEST_TARGET:,} ev/s",
                f"{load.rate / INGEST_TARGET:.2f}",
                "PASS" if load.rate >= INGEST_TARGET else "MISS",
            ),
            Row("raw SQLite executemany, same rows", f"{raw:,.0f} ev/s"),
            Row("ingest / raw SQLite", f"{load.rate / raw:.2f}", f"(spike: {SPIKE_RATIO})"),
            Row("SQLiteStore.append alone, same rows", f"{append:,.0f} ev/s"),
            Row(
                "events stored / sent",
                f"{stored:,} / {sent:,}",
                "exactly, same heads",
                f"{stored / sent:.3f}",
                "PASS" if exact else "FAIL",
            ),
        ]
        if not args.skip_agent:
            table += _agent(args, s, ports)
    finally:
        code = collector.stop()
    if code != 0:
        raise BenchError(f"the collector exited with {code}{collector.tail()}")
    print(f"collector stopped: {json.dumps(collector.expect(timeout=5))}")
    return exact


def _run(args: argparse.Namespace, workdir: Path, table: list[Row]) -> bool:
    """Run every measurement into ``table``; False when a store does not hold exactly
    what was sent. Raises when a step cannot run."""
    exact = _ingest_and_agent(args, workdir, table) if not args.skip_ingest else True
    if not args.skip_files:
        table += _file_guard(args)
    if not args.skip_devices:
        table += _devices_and_links()
    if not args.skip_reports:
        table += _reports()
    if not args.skip_console:
        table += _console()
    if not args.skip_fleet:
        for count in args.fleet_collectors:
            rows, fleet_exact = _fleet(args, workdir / f"fleet-{count}", count)
            table += rows
            exact = exact and fleet_exact
    return exact


def _fleet(args: argparse.Namespace, workdir: Path, collectors: int) -> tuple[list[Row], bool]:
    """The simulated fleet through HAProxy on PostgreSQL, beside a raw COPY."""
    started = time.perf_counter()
    workdir.mkdir()
    f = fleet_figure.measure(
        workdir,
        collectors=collectors,
        hosts=args.fleet_hosts,
        events=args.fleet_events,
    )
    n = f"{f.collectors} collector{'s' if f.collectors > 1 else ''}"
    print(
        f"fleet: {f.hosts:,} hosts x {f.events // f.hosts} events through HAProxy to {n} on "
        f"PostgreSQL: {f.rate:,.0f} events/s, raw COPY {f.raw_copy_rate:,.0f} events/s; "
        f"Ack p50 {f.ack_p50_ms:.0f} ms, p99 {f.ack_p99_ms:.0f} ms; enrolment "
        f"{f.enroll_s:.1f} s, connect {f.connect_s:.1f} s; {f.errors} errors, "
        f"{f.reconnects} reconnects; {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return [
        Row(f"fleet: {f.hosts:,} hosts via HAProxy, {n}, PostgreSQL", f"{f.rate:,.0f} ev/s"),
        Row("fleet: raw PostgreSQL COPY, same rows", f"{f.raw_copy_rate:,.0f} ev/s"),
        Row("fleet: simulator / raw COPY", f"{f.rate / f.raw_copy_rate:.2f}"),
        Row("fleet: Ack latency p99 (saturated)", f"{f.ack_p99_ms:,.0f} ms"),
        Row(f"fleet: collector RSS per 1,000 hosts ({n})", f"{f.rss_per_1000_mb:.1f} MB"),
        Row(f"fleet: collector RSS, no host ({n})", f"{f.rss_idle_mb:.1f} MB"),
        Row(
            "fleet: every host's seq 1..N stored once",
            "yes" if f.exact else "no",
            "exactly",
            "-",
            "PASS" if f.exact and not f.errors else "FAIL",
        ),
    ], f.exact


def _console() -> list[Row]:
    """Events-page query time over 1,000,000 stored events."""
    rows: list[Row] = []
    for name, value, unit in console.run():
        if name == "console: events page p95":
            rows.append(_target_row(name, value, "ms", console.P95_TARGET_MS))
        else:
            rows.append(Row(name, f"{value:,.2f} {unit}"))
    return rows


def _reports() -> list[Row]:
    """Time to build the half-year inspection report over 1,000,000 events."""
    rows: list[Row] = []
    for name, value, unit in reports.run():
        if name.startswith("report: half-year inspection"):
            rows.append(_target_row(name, value, "s", reports.TARGET_S))
        else:
            rows.append(Row(name, f"{value:,.2f} {unit}"))
    return rows


USB_TARGET_MS = 50.0  # add -> authorized=0, p99


def _devices_and_links() -> list[Row]:
    """USB add -> authorized=0 latency (umockdev) and netlink change -> event latency."""
    rows: list[Row] = []
    for name, value, unit in usb.run():
        if name.endswith("p99"):
            rows.append(_target_row(name, value, "ms", USB_TARGET_MS))
        else:
            rows.append(Row(name, f"{value:,.2f} {unit}"))
    if os.geteuid() != 0:
        rows.append(Row("netlink latency", "not measured", "needs root", "-", "SKIP"))
        return rows
    rows += [Row(name, f"{value:,.2f} {unit}") for name, value, unit in netlink.run()]
    return rows


RATIO_FIGURES = (
    "fanotify: agent / C, same CPU",
    "fanotify: agent / C, free CPUs",
)


def _target_row(name: str, value: float, unit: str, target: float) -> Row:
    return Row(
        name,
        f"{value:.2f} {unit}",
        f"<= {target:g}",
        f"{value / target:.2f}",
        "PASS" if value <= target else "MISS",
    )


def _file_guard(args: argparse.Namespace) -> list[Row]:
    """Decision speed (engine vs pycasbin) and protected-open latency (agent vs C)."""
    rows: list[Row] = []
    figures = {name: (value, unit) for name, value, unit in decision.run()}
    for name, (value, unit) in figures.items():
        if name == "decision: engine cold":
            rows.append(_target_row(name, value, "µs", decision.ENGINE_TARGET_US))
        elif name == "decision: engine != pycasbin":
            rows.append(Row(name, f"{value:.0f}", unit, "-", "PASS" if value == 0 else "FAIL"))
        else:
            rows.append(Row(name, f"{value:,.2f} {unit}"))
    if os.geteuid() != 0:
        rows.append(Row("fanotify opens", "not measured", "needs root", "-", "SKIP"))
        return rows
    for name, value, unit in fanotify.run(args.opens):
        if name in RATIO_FIGURES:
            rows.append(_target_row(name, value, "x", fanotify.RATIO_TARGET))
        elif name in (
            "fanotify: opens not in the record",
            "fanotify: Python-path misses + timeouts + errors",
        ):
            rows.append(Row(name, f"{value:.0f}", unit, "-", "PASS" if value == 0 else "FAIL"))
        else:
            rows.append(Row(name, f"{value:,.2f} {unit}"))
    rows += _guard_workloads()
    return rows


def _guard_workloads() -> list[Row]:
    """The guard on the workloads real work takes (bench.guard_workloads)."""
    rows: list[Row] = []
    for name, value, unit in guard_workloads.run():
        workload = next(
            (w for w in guard_workloads.TARGETS if f"guard {w}: agent / C" in name), None
        )
        if workload is not None and name.endswith("same CPU"):
            rows.append(_target_row(name, value, "x", guard_workloads.TARGETS[workload]))
        elif name == "guard workloads: opens not in the record":
            rows.append(Row(name, f"{value:.0f}", unit, "-", "PASS" if value == 0 else "FAIL"))
        else:
            rows.append(Row(name, f"{value:,.2f} {unit}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the exit status says whether everything ran."""
    args = _parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="baomi-bench-", dir=args.dir))
    table: list[Row] = []
    started = time.perf_counter()
    try:
        ok = _run(args, workdir, table)
    except (BenchError, OSError) as e:
        print(f"\nbench: FAILED: {e}", file=sys.stderr)
        ok = False
    except Exception:  # noqa: BLE001 - report any failure, keep the logs
        traceback.print_exc()
        ok = False
    _print_table(table)
    print(f"\n{time.perf_counter() - started:.0f} s in all", end="")
    if args.keep or not ok:
        print(f"; logs and store kept in {workdir}")
    else:
        print()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
