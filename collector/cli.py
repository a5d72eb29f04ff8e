"""``baomi-collector``: run the collector and work with its record."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import logging
import sys
from pathlib import Path

from baomi import display
from baomi.cliparse import HelpfulParser
from baomi.clitext import lang, t, table
from baomi.config import ConfigFileError, add_config_option, parse_with_config
from baomi.v1 import events_pb2
from google.protobuf import json_format

from collector import audit, checkpoint, pki
from collector.cli_register import add_register_commands
from collector.enrollment import TOKEN_SECONDS, create_token
from collector.errors import CollectorError
from collector.reports.cli import add_report_commands
from collector.server import ServerConfig, serve
from collector.store import CheckpointRow, EventQuery, EventRow, Store, open_store

_logger = logging.getLogger("collector")

DEFAULT_STORE = "sqlite:///var/collector.db"
DEFAULT_PKI = Path("var/pki")
DEFAULT_CONFIG = Path("/etc/baomi/collector.toml")


def _parse_time(text: str) -> int:
    """An ISO 8601 date or time (UTC when no zone is given) in microseconds."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as e:
        raise CollectorError(
            f"cannot read time {text!r}: use ISO 8601, e.g. 2026-11-27 or 2026-11-27T08:00+08:00"
        ) from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1_000_000)


def event_dict(row: EventRow) -> dict[str, object]:
    """A stored event as JSON-ready data, the body decoded."""
    ev = events_pb2.Event.FromString(row.body)
    doc: dict[str, object] = json_format.MessageToDict(ev, preserving_proto_field_name=True)
    doc["received_at"] = dt.datetime.fromtimestamp(row.received_us / 1e6, dt.UTC).isoformat()
    doc["hash"] = row.hash.hex()
    doc.pop("prev_hash", None)
    doc["prev_hash"] = ev.prev_hash.hex()
    return doc


def _print_events(rows: list[EventRow], as_json: bool) -> None:
    if as_json:
        for row in rows:
            # Device strings, paths and the like cannot drive the terminal or reorder the
            # line: json.dumps escapes C0 controls, escape_json the rest (DEL, C1, bidi).
            print(display.escape_json(json.dumps(event_dict(row), ensure_ascii=False)))
        return
    if not rows:
        return
    language = lang()
    columns = ("time", "host", "seq", "severity", "kind", "detail")
    shown = [tuple(t(f"events.col.{c}", language) for c in columns)]
    for row in rows:
        doc = event_dict(row)
        when = dt.datetime.fromtimestamp(row.event_time_us / 1e6, dt.UTC).isoformat(
            timespec="seconds"
        )
        severity = events_pb2.Severity.Name(row.severity).removeprefix("SEVERITY_").lower()
        detail = display.escape_json(json.dumps(doc.get(row.kind, {}), ensure_ascii=False))
        shown.append(
            (
                when,
                display.escape(row.host_id),
                f"#{row.seq}",
                t(f"events.severity.{severity}", language, default=severity),
                display.escape(t(f"events.kind.{row.kind}", language, default=row.kind)),
                detail,
            )
        )
    # Columns padded in terminal cells, so a Chinese kind or host name keeps them aligned.
    for line in table(shown):
        print(line)


def _port(text: str) -> int:
    """A TCP port number (0: any free one)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def _cmd_pki_init(args: argparse.Namespace) -> int:
    pki.init_authority(args.dir, args.name or ["localhost", "127.0.0.1"])
    print(f"created CA, server certificate and signing key in {args.dir}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    console = None
    if args.console:
        from collector.console import ConsoleConfig  # noqa: PLC0415 - web stack on use

        console = ConsoleConfig(
            listen=args.console,
            cert=args.console_cert,
            key=args.console_key,
            metrics_token_file=args.metrics_token_file,
        )
    elif args.console_cert or args.console_key or args.metrics_token_file:
        raise CollectorError(
            "--console-cert, --console-key and --metrics-token-file need --console HOST:PORT"
        )
    reports = None
    if args.reports_dir is not None:
        from collector.reports.schedule import ScheduleConfig  # noqa: PLC0415 - on use

        reports = ScheduleConfig(
            out_dir=args.reports_dir,
            policies_dir=args.policies or Path("policies"),
            verify_key_path=args.pki / "signing.pub",
            witness_path=args.witness,
            unit=args.unit,
            store_url=args.store,
        )
    store = open_store(args.store)
    config = ServerConfig(
        listen=args.listen,
        enroll_listen=args.enroll_listen,
        pki_dir=args.pki,
        policies_dir=args.policies,
        checkpoint_seconds=args.checkpoint_seconds,
        witness=args.witness,
        console=console,
        reports=reports,
        health_port=args.health_port,
    )
    try:
        asyncio.run(serve(store, config))
    finally:
        store.close()
    return 0


def _cmd_token_create(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        print(create_token(store, args.host, args.ttl))
    finally:
        store.close()
    return 0


def _cmd_enroll_file_token(args: argparse.Namespace) -> int:
    from collector import offline  # noqa: PLC0415 - offline hosts on use

    store = open_store(args.store)
    try:
        offline.token_file(store, args.pki, args.host, args.out, args.ttl)
    finally:
        store.close()
    print(
        f"token file for host {args.host} written to {args.out} (single use, valid "
        f"{args.ttl} s); on the host: 'baomi-agent enroll --token-file {args.out.name} "
        "--csr-out REQUEST'"
    )
    return 0


def _cmd_enroll_file_sign(args: argparse.Namespace) -> int:
    from collector import offline  # noqa: PLC0415 - offline hosts on use

    store = open_store(args.store)
    try:
        host = offline.sign_request(store, args.pki, args.request, args.out)
    except offline.RefusedError as e:
        print(f"baomi-collector: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"certificate of host {host} written to {args.out}; on the host: "
        f"'baomi-agent enroll --cert-file {args.out.name}'"
    )
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from collector import offline  # noqa: PLC0415 - offline hosts on use

    ca = pki.load_authority(args.pki).ca_pem
    store = open_store(args.store)
    try:
        done = offline.import_file(store, ca, args.file)
    except offline.RefusedError as e:
        print(f"baomi-collector: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if done.stored:
        print(
            f"host {done.host_id}: {done.stored} events stored (export seq "
            f"{done.first_seq}..{done.last_seq}); the record holds it through seq {done.head_seq}"
        )
    else:
        print(
            f"host {done.host_id}: nothing new: seq {done.first_seq}..{done.last_seq} were "
            f"stored before; the record holds it through seq {done.head_seq}"
        )
    print(
        f"on the host, to let its spool go: 'baomi-agent export --forget-through {done.head_seq}'"
    )
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        rows = store.query(
            EventQuery(
                host_id=args.host,
                kind=args.kind,
                since_us=_parse_time(args.since) if args.since else None,
                limit=args.limit,
                # Heartbeats (one per host every half minute) bury what an officer
                # looks for: listed only when asked for.
                fold_heartbeats=not args.heartbeats and args.kind != "agent_status",
            )
        )
    finally:
        store.close()
    _print_events(rows, args.json)
    return 0


def _cmd_user_add(args: argparse.Namespace) -> int:
    from collector.console.auth import create_account  # noqa: PLC0415 - argon2 on use

    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    store = open_store(args.store)
    try:
        account, password = create_account(
            store, args.name, role=args.role, by=_cli_actor(), password=password
        )
    finally:
        store.close()
    if args.password_stdin:
        print(f"created {account.name} ({account.role})")
    else:
        print(f"created {account.name} ({account.role}); password: {password}")
    return 0


def _cli_actor() -> str:
    # "cli:" marks it for the running collector, which records it in the audit log.
    return f"cli:{getpass.getuser()}"


def _cmd_user_list(args: argparse.Namespace) -> int:
    from collector.console import accounts  # noqa: PLC0415 - argon2 on use

    store = open_store(args.store)
    try:
        rows = [(a, accounts.wait_of(store, a.name)) for a in store.accounts()]
    finally:
        store.close()
    print(f"{'NAME':<20} {'ROLE':<10} {'STATE':<10} {'WAIT':>6}  CREATED BY / GRANTED BY")
    for a, wait in rows:
        state = "disabled" if a.disabled else ("change-pw" if a.must_change else "enabled")
        print(
            f"{a.name:<20} {a.role or '-':<10} {state:<10} {wait:>5}s  "
            f"{a.created_by} / {a.granted_by or '-'}"
        )
    return 0


def _cmd_user_action(args: argparse.Namespace) -> int:
    """grant, reset, revoke, disable, enable, unlock: done (or refused), queued for the
    audit log either way, and a one-time password printed where one is set."""
    from collector.ingest import now_us  # noqa: PLC0415 - the server stack on use
    from collector.store.base import PendingAction  # noqa: PLC0415

    by, name, command = _cli_actor(), args.name, args.user_command
    action = _USER_ACTIONS[command]
    store = open_store(args.store)
    try:
        try:
            detail, password = _user_change(store, args, by)
        except CollectorError as e:
            # Refused on the command line is on record too, as in the console.
            store.queue_action(PendingAction(0, now_us(), by, action, name, str(e), ok=False))
            raise
        store.queue_action(PendingAction(0, now_us(), by, action, name, detail))
    finally:
        store.close()
    print(f"{command}: {name}" + (f"; one-time password: {password}" if password else ""))
    return 0


def _user_change(store: Store, args: argparse.Namespace, by: str) -> tuple[str, str]:
    """Carry out one ``user`` command: the audit detail, and a one-time password or ""."""
    from collector.console import accounts  # noqa: PLC0415 - argon2 on use

    name, command = args.name, args.user_command
    if command == "grant":
        password = accounts.grant(store, name, args.role, by)
        return f"{args.role}; one-time password set, earlier credentials ended", password
    if command == "reset":
        return "one-time password set, sessions ended", accounts.reset(store, name)
    if command == "revoke":
        return f"{accounts.revoke(store, name)} revoked, sessions ended", ""
    if command == "disable":
        accounts.disable(store, name, by)
        return "sessions ended", ""
    if command == "enable":
        accounts.enable(store, name)
        return "", ""
    had = accounts.unlock(store, name)
    return ("guessing wait cleared" if had else "no failed attempts counted"), ""


# The audit log's action of each ``user`` command (the console's own names).
_USER_ACTIONS = {
    "grant": "role_grant",
    "reset": "password_reset",
    "revoke": "role_revoke",
    "disable": "account_disable",
    "enable": "account_enable",
    "unlock": "account_unlock",
}


def _host_seq(text: str) -> tuple[str, int]:
    host, _, seq = text.rpartition(":")
    if not host or not seq.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give HOST:SEQ, e.g. ws-01:42")
    return host, int(seq)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    key = pki.load_verify_key(args.pki / "signing.pub")
    witness: list[CheckpointRow] = []
    if args.witness is not None:
        try:
            witness = checkpoint.read_witness(args.witness)
        except OSError as e:
            raise CollectorError(f"cannot read the witness file {args.witness}: {e}") from e
        except checkpoint.WitnessError as e:
            raise CollectorError(f"{e}; the witness file was damaged or is not one") from e
    store = open_store(args.store)
    try:
        report = audit.verify(
            store,
            key,
            witness=witness,
            accepted=args.accept_break,
            grace_us=int(args.grace * 1e6),
        )
    finally:
        store.close()
    for damage in report.damage:
        print(f"DAMAGE {damage}")
    for host, seq in report.accepted_breaks:
        print(f"note: host {host} seq {seq}: chain break recorded at ingest, accepted as reviewed")
    verdict = "OK" if report.ok else "FAILED"
    print(
        f"{verdict}: {report.hosts} hosts, {report.events} events, "
        f"{report.checkpoints} checkpoints"
        + (f" ({report.witnessed} witnessed)" if args.witness is not None else "")
        + f"; {len(report.damage)} problems; "
        f"{report.unanchored} events newer than the last checkpoint"
    )
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    p = HelpfulParser(prog="baomi-collector", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_config_option(p, DEFAULT_CONFIG)
    sub = p.add_subparsers(dest="command", required=True)

    def with_store(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--store",
            default=DEFAULT_STORE,
            help=f"sqlite:///PATH or postgresql://... (default {DEFAULT_STORE})",
        )
        return sp

    pki_p = sub.add_parser("pki", help="the collector's certificate authority")
    pki_sub = pki_p.add_subparsers(dest="pki_command", required=True)
    init = pki_sub.add_parser("init", help="create a CA, server certificate and signing key")
    init.add_argument(
        "--dir", type=Path, default=DEFAULT_PKI, help="where the CA and signing keys are made"
    )
    init.add_argument(
        "--name",
        action="append",
        help="server DNS name or IP address (repeatable; default localhost, 127.0.0.1)",
    )
    init.set_defaults(func=_cmd_pki_init)

    s = with_store(sub.add_parser("serve", help="run the collector"))
    s.add_argument(
        "--pki",
        type=Path,
        default=DEFAULT_PKI,
        help="the directory 'pki init' made: CA (signs host certificates), the "
        "collector's TLS certificate and the checkpoint signing key",
    )
    s.add_argument("--listen", default="127.0.0.1:7443", help="mTLS address for agents")
    s.add_argument("--enroll-listen", default="127.0.0.1:7444", help="TLS address for enrolment")
    s.add_argument(
        "--health-port",
        type=_port,
        metavar="PORT",
        help="serve plain-HTTP 'GET /health' for a load balancer on this port of the "
        "--listen host: 200 while serving and the store answers, 503 otherwise "
        "(deploy/haproxy/haproxy.cfg)",
    )
    s.add_argument("--policies", type=Path, default=None, help="policy directory to distribute")
    s.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=10.0,
        help="how often the chain heads are signed into a checkpoint",
    )
    s.add_argument(
        "--witness",
        type=Path,
        help="also append every signed checkpoint to this file, kept outside the database "
        "(other storage, append-only, or shipped to a log server); audit verify --witness "
        "then finds the newest events removed together with their checkpoints",
    )
    s.add_argument("--console", metavar="HOST:PORT", help="serve the web console here")
    s.add_argument(
        "--reports-dir",
        type=Path,
        default=None,
        help="make the monthly and half-yearly inspection reports here when due",
    )
    s.add_argument("--unit", default="", help="the organisation named on report covers")
    s.add_argument("--console-cert", type=Path, help="PEM certificate: the console speaks TLS")
    s.add_argument("--console-key", type=Path, help="PEM private key of --console-cert")
    s.add_argument(
        "--metrics-token-file",
        type=Path,
        metavar="PATH",
        help="serve /metrics on the console to a scraper sending this file's token as "
        "'Authorization: Bearer TOKEN' (without it, /metrics answers 404)",
    )
    s.set_defaults(func=_cmd_serve)

    tok = sub.add_parser("token", help="enrolment tokens")
    tok_sub = tok.add_subparsers(dest="token_command", required=True)
    create = with_store(tok_sub.add_parser("create", help="print a single-use token for a host"))
    create.add_argument("--host", required=True, help="the host id the token enrols")
    create.add_argument("--ttl", type=int, default=TOKEN_SECONDS, help="seconds (default 1 day)")
    create.set_defaults(func=_cmd_token_create)

    ef = sub.add_parser(
        "enroll-file",
        help="enrol an offline host by files carried on a registered stick",
        description="Enrol a host that is never networked: 'token' writes a token file "
        "for the host; 'baomi-agent enroll --token-file' there writes a request file "
        "(the host key stays on the host); 'sign' turns it into the host's certificate "
        "file, which 'baomi-agent enroll --cert-file' installs. Both steps are recorded "
        "in the collector's record.",
    )
    ef_sub = ef.add_subparsers(dest="enroll_file_command", required=True)

    def with_pki(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--pki", type=Path, default=DEFAULT_PKI, help=f"CA directory (default {DEFAULT_PKI})"
        )
        return with_store(sp)

    eft = with_pki(ef_sub.add_parser("token", help="write a single-use token file for a host"))
    eft.add_argument("--host", required=True, help="the host id the token enrols")
    eft.add_argument("--out", type=Path, required=True, help="the token file to write (0600)")
    eft.add_argument("--ttl", type=int, default=TOKEN_SECONDS, help="seconds (default 1 day)")
    eft.set_defaults(func=_cmd_enroll_file_token)
    efs = with_pki(
        ef_sub.add_parser(
            "sign",
            help="sign a host's request file into its certificate file",
            epilog="exit status: 0 signed, 1 refused (token unknown, used, expired or "
            "for another host), 2 the file or the CA cannot be read",
        )
    )
    efs.add_argument("request", type=Path, help="the file 'baomi-agent enroll --csr-out' wrote")
    efs.add_argument("--out", type=Path, required=True, help="the certificate file to write")
    efs.set_defaults(func=_cmd_enroll_file_sign)

    im = with_pki(
        sub.add_parser(
            "import",
            help="store an offline host's export once (baomi-agent export)",
            description="Check an offline host's export like a streamed batch (chain, "
            "values, replays) and more (its own chain unbroken, signed by the key this "
            "collector certified for the host, continuing the stored chain), then store "
            "the events the record does not hold yet. Importing a file twice stores "
            "nothing the second time. Each import, done or refused, is recorded in the "
            "collector's record; a running collector signs the events into its next "
            "checkpoint.",
            epilog="exit status: 0 stored (or nothing new: said so), 1 refused (the "
            "message names the seq or what is wrong; nothing stored), 2 the file, the "
            "store or the CA cannot be read",
        )
    )
    im.add_argument("file", type=Path, help="the export file")
    im.set_defaults(func=_cmd_import)

    ev = with_store(sub.add_parser("events", help="print stored events, newest first"))
    ev.add_argument("--host", help="only this host's events (_collector: its own alerts)")
    ev.add_argument(
        "--kind", help="only this kind: file_access, usb_device, tamper, agent_status, ..."
    )
    ev.add_argument("--since", help="ISO 8601 date or time")
    ev.add_argument("--limit", type=int, default=100, help="newest events listed at most")
    ev.add_argument(
        "--heartbeats",
        action="store_true",
        help="list the agents' heartbeats (agent_status) too; left out otherwise",
    )
    ev.add_argument("--json", action="store_true", help="one JSON object per line")
    ev.set_defaults(func=_cmd_events)

    us = sub.add_parser("user", help="console accounts")
    us_sub = us.add_subparsers(dest="user_command", required=True)
    add = with_store(us_sub.add_parser("add", help="create a console account with its role"))
    add.add_argument("name", help="the account's login name")
    add.add_argument(
        "--role", required=True, choices=["sysadmin", "secadmin", "auditor"], help="its role"
    )
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (else one is generated)",
    )
    add.set_defaults(func=_cmd_user_add)
    ls = with_store(us_sub.add_parser("list", help="every account, its role and state"))
    ls.set_defaults(func=_cmd_user_list)
    helps = {
        "grant": "give an account without a role its role; prints a one-time password",
        "reset": "set a new one-time password (changed at next login); ends sessions",
        "revoke": "take an account's role; ends its sessions",
        "disable": "stop an account from logging in; ends its sessions",
        "enable": "let a disabled account log in again",
        "unlock": "clear the wait that failed logins put on an account",
    }
    for command, text in helps.items():
        cmd = with_store(us_sub.add_parser(command, help=text))
        cmd.add_argument("name", help="the account's login name")
        if command == "grant":
            cmd.add_argument(
                "--role",
                required=True,
                choices=["sysadmin", "secadmin", "auditor"],
                help="the role to grant",
            )
        cmd.set_defaults(func=_cmd_user_action)

    au = sub.add_parser("audit", help="check the record")
    au_sub = au.add_subparsers(dest="audit_command", required=True)
    ver = with_store(au_sub.add_parser("verify", help="recompute every chain and checkpoint"))
    ver.add_argument(
        "--pki",
        type=Path,
        default=DEFAULT_PKI,
        help="where signing.pub is, the key checkpoints are verified with",
    )
    ver.add_argument(
        "--witness",
        type=Path,
        help="the witness file of serve --witness: its checkpoints must all be in the store",
    )
    ver.add_argument(
        "--accept-break",
        action="append",
        default=[],
        type=_host_seq,
        metavar="HOST:SEQ",
        help="a chain break recorded at ingest that you have reviewed (repeatable): "
        "listed as accepted instead of counted as damage",
    )
    ver.add_argument(
        "--grace",
        type=float,
        default=audit.UNCOVERED_GRACE_US / 1e6,
        metavar="SECONDS",
        help="events newer than the newest checkpoint are damage once that checkpoint "
        "is older than this (default %(default).0f s: the collector is not signing)",
    )
    ver.set_defaults(func=_cmd_audit_verify)

    add_report_commands(sub, with_store)  # -- reports --
    add_register_commands(sub, with_store)  # -- the classification register --
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``baomi-collector``."""
    try:
        args = parse_with_config(
            build_parser(), sys.argv[1:] if argv is None else argv, DEFAULT_CONFIG
        )
    except ConfigFileError as e:
        print(f"baomi-collector: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # WeasyPrint and fontTools narrate every layout step at INFO: keep their warnings only.
    for noisy in ("weasyprint", "fontTools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except CollectorError as e:
        print(f"baomi-collector: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
