"""``baomi-agent``: enrol this host and run the agent."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.core import AgentConfig, run_agent
from agent.errors import AgentError
from agent.identity import enroll
from agent.stream import StreamConfig

DEFAULT_STATE = Path("/var/lib/baomi")


def _cmd_enroll(args: argparse.Namespace) -> int:
    try:
        ca = args.ca.read_bytes()
    except OSError as e:
        raise AgentError(f"cannot read the collector's CA certificate {args.ca}: {e}") from e
    identity = enroll(args.state_dir, args.collector, args.token, ca, args.enroll_address)
    print(f"enrolled as {identity.host_id}; state in {args.state_dir}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    run_agent(
        AgentConfig(
            state_dir=args.state_dir,
            heartbeat_seconds=args.heartbeat,
            spool_max_bytes=args.spool_max_mb * 1024 * 1024,
            stream=StreamConfig(batch_events=args.batch_events),
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    p = argparse.ArgumentParser(prog="baomi-agent", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help=f"certificates, spool and policy (default {DEFAULT_STATE})",
    )
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("enroll", help="enrol this host with a single-use token")
    e.add_argument("--collector", required=True, help="HOST:PORT of the collector's agent port")
    e.add_argument("--token", required=True)
    e.add_argument("--ca", type=Path, required=True, help="the collector's CA certificate (PEM)")
    e.add_argument("--enroll-address", help="HOST:PORT of enrolment (default: agent port + 1)")
    e.set_defaults(func=_cmd_enroll)

    r = sub.add_parser("run", help="run the agent")
    r.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    r.add_argument("--spool-max-mb", type=int, default=1024, help="spool size that raises an alarm")
    r.add_argument("--batch-events", type=int, default=500)
    r.set_defaults(func=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``baomi-agent``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except AgentError as e:
        print(f"baomi-agent: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
