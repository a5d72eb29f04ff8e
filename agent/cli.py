"""``baomi-agent``: enrol this host, run the agent, label files and check the file policy."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from baomi import labels
from baomi.cliparse import HelpfulParser
from baomi.config import AppendOrOne, ConfigFileError, add_config_option, parse_with_config
from baomi.display import escape
from baomi.policy.errors import LabelError

from agent import destroy
from agent.core import AgentConfig, run_agent
from agent.devices import cli as devices_cli
from agent.errors import AgentError
from agent.identity import enroll
from agent.meeting import cli as meeting_cli
from agent.stream import StreamConfig

DEFAULT_STATE = Path("/var/lib/baomi")
DEFAULT_CONFIG = Path("/etc/baomi/agent.toml")
DEFAULT_POLICIES = Path("policies")  # relative to the working directory, for now


# Offline enrolment and export (agent.offline: cryptography's X.509 layer) and the
# local record's listings are imported by their commands only, so that ``run`` does not
# carry them: an idle agent's resident memory is what it imports.
def _cmd_enroll(args: argparse.Namespace) -> int:
    from agent import offline  # noqa: PLC0415 - see above

    by_file = args.token_file is not None or args.cert_file is not None
    if by_file and (args.collector or args.token or args.ca):
        raise AgentError("enrol either by network (--collector, --token, --ca) or by file")
    if args.token_file is not None:
        if args.csr_out is None:
            raise AgentError("--token-file needs --csr-out FILE: where the request is written")
        host = offline.request_from_token(args.state_dir, args.token_file, args.csr_out)
        print(
            f"request of host {host} written to {args.csr_out}; at the collector run "
            f"'baomi-collector enroll-file sign {args.csr_out.name} --out CERT', then here "
            f"'baomi-agent --state-dir {args.state_dir} enroll --cert-file CERT'"
        )
        return 0
    if args.cert_file is not None:
        host = offline.install_certificate(args.state_dir, args.cert_file)
        print(f"certificate of host {host} installed in {args.state_dir}; exports are signed")
        return 0
    if not (args.collector and args.token and args.ca):
        raise AgentError(
            "give --collector, --token and --ca (enrolment over the network), or "
            "--token-file with --csr-out, then --cert-file (an offline host, by file)"
        )
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
            collectors=tuple(args.collector),
            sensors=_sensor_settings(args),
            offline=args.offline,
            host_id=args.host_id,
        )
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from agent import offline  # noqa: PLC0415 - see _cmd_enroll

    if args.forget_through is not None:
        if args.out is not None or args.again:
            raise AgentError("--forget-through is given alone, after an import")
        forgotten = offline.forget_through(args.state_dir, args.forget_through)
        print(f"through seq {args.forget_through}: {forgotten} events confirmed imported")
        return 0
    if args.out is None:
        raise AgentError("give --out FILE (on a registered stick), or --forget-through SEQ")
    done = offline.export(args.state_dir, args.out, again=args.again)
    print(
        f"host {done.host_id}: seq {done.first_seq}..{done.last_seq} exported to {done.path}; "
        f"at the collector: 'baomi-collector import {done.path.name}'"
    )
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    from agent import localrecord  # noqa: PLC0415 - see _cmd_enroll

    for line in localrecord.list_events(
        args.state_dir,
        limit=args.limit,
        kind=args.kind,
        heartbeats=args.heartbeats,
        as_json=args.json,
    ):
        print(line)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from agent import localrecord  # noqa: PLC0415 - see _cmd_enroll

    for line in localrecord.host_report(args.state_dir):
        print(line)
    return 0


def _sensor_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Which sensors to start, from the command line."""
    sensors: dict[str, dict[str, Any]] = {}
    if args.protect:
        sensors["files"] = {
            "roots": [str(p) for p in args.protect],
            "policies": str(args.policies) if args.policies else None,
            "deadline": args.deadline_ms / 1000,
            "unsafe_no_guardian": args.unsafe_no_guardian,
            "pre_content": not args.no_pre_content,
            "follow_filesystems": args.follow_filesystems,
            "label_key": str(_label_key_path(args)),
        }
    if args.network:
        sensors["network"] = {"gateways": args.gateway, "enforce": args.enforce_network}
    if args.process:
        sensors["process"] = {}
    if args.meeting_room:
        sensors["meeting"] = {
            "room": args.meeting_room,
            "rooms": str(args.rooms),
            "meetings": str(args.meetings),
            "subjects": str(args.subjects),
            "state_dir": str(args.state_dir),
            "sweep": str(args.meeting_sweep) if args.meeting_sweep else None,
            "lead_minutes": args.meeting_lead_min,
        }
    if args.usb:
        policies = args.policies or args.state_dir / "policy"
        sensors["usb"] = {
            "policies": str(policies),
            "unsafe_report_only": args.unsafe_usb_report_only,
        }
    return sensors


def _label_key_path(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) / labels.LABEL_KEY_FILE


def _label_key_to_judge(args: argparse.Namespace) -> bytes:
    """The label key, without which a sealed label cannot be judged as the guard judges
    it (a tampered label would read as valid); AgentError (exit 2) saying how."""
    try:
        return labels.load_label_key(_label_key_path(args))
    except LabelError as e:
        raise AgentError(
            f"cannot check label seals: {e}; a decision on a real file rests on its sealed "
            "label: run as root with the agent's --state-dir "
            f"(baomi-agent --state-dir DIR {args.command} ...)"
        ) from e


def _label_key_or_note(args: argparse.Namespace) -> bytes | None:
    """The label key to check seals with; None (and a note on stderr) if unreadable."""
    try:
        return labels.load_label_key(_label_key_path(args))
    except LabelError as e:
        print(f"note: label seals not checked: {e}", file=sys.stderr)
        return None


def _cmd_label_set(args: argparse.Namespace) -> int:
    key = labels.load_label_key(_label_key_path(args), create=True)
    values = {"until": args.until, "scope": args.scope or (), "label_id": args.id, "key": key}
    if args.recursive:
        started = time.monotonic()
        files, dirs = labels.set_label_tree(args.path, args.level, **values)
        took = time.monotonic() - started
        print(
            f"{args.path}: {files} files and {dirs} directories labelled "
            f"{labels.LEVEL_NAMES[labels.parse_level(args.level)]} in {took:.2f} s"
        )
        return 0
    label = labels.set_label(args.path, args.level, **values)
    print(f"{args.path}: {label.describe()}")
    return 0


def _cmd_label_request(args: argparse.Namespace) -> int:
    from agent import label_orders  # noqa: PLC0415 - only this subcommand needs it

    request = label_orders.make_request(
        args.path,
        action=args.action,
        level=args.level,
        until=args.until,
        scope=args.scope,
        basis=args.basis,
        title=args.title,
        register_id=args.id,
        responsible=args.responsible,
        key=_label_key_or_note(args),
    )
    seq = label_orders.spool_request(Path(args.state_dir), request)
    print(
        f"{args.path}: {args.action} request {request.request_id} spooled as event {seq}; "
        "an approver decides it in the console, then the label order is applied here"
    )
    return 0


def _cmd_destroy(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise AgentError("destroy runs as root (sudo baomi-agent destroy ...)")
    path = str(Path(args.path).absolute())
    answer = destroy.ask_agent(args.state_dir, path, args.order, args.by)
    if answer is None:  # no agent runs: nothing guards the file, do it here
        answer = _destroy_here(args, path).describe()
    print(answer)
    return 0


def _destroy_here(args: argparse.Namespace, path: str) -> destroy.Destroyed:
    from baomi.v1 import events_pb2  # noqa: PLC0415

    from agent.identity import load_identity  # noqa: PLC0415 - only this subcommand
    from agent.spool import Spool  # noqa: PLC0415

    identity = load_identity(Path(args.state_dir))
    spool = Spool(Path(args.state_dir) / "spool.db")

    def record(event: events_pb2.Event) -> None:  # as a running agent would, in its spool
        spool.append([event])

    try:
        destroyer = destroy.Destroyer(
            Path(args.state_dir),
            host_id=identity.host_id,
            verify_key=destroy.signing_key(identity),
            label_key=lambda: _label_key_or_note(args),
            policies=destroy.load_policies(args.policies or Path(args.state_dir) / "policy"),
            emit=record,
        )
        return destroyer.destroy(path, args.order, args.by)
    finally:
        spool.close()


def _cmd_label_show(args: argparse.Namespace) -> int:
    key = _label_key_or_note(args)
    try:
        label = labels.read_label(args.path, key)
    except OSError as e:
        raise AgentError(f"cannot read the label of {args.path}: {e.strerror}") from e
    print(f"{args.path}: {'unlabelled (unclassified)' if label is None else label.describe()}")
    return 0


def _cmd_label_clear(args: argparse.Namespace) -> int:
    try:
        had = labels.clear_label(args.path)
    except OSError as e:
        raise AgentError(f"cannot clear the label of {args.path}: {e.strerror}") from e
    print(f"{args.path}: {'label removed' if had else 'was not labelled'}")
    return 0


# The guardian's client is imported by its commands only: it is part of the file guard.
def _cmd_guardian_stop(args: argparse.Namespace) -> int:
    from agent.sensors.files import guardian  # noqa: PLC0415 - see above

    if guardian.release(args.state_dir):
        print(f"guardian of {args.state_dir} released: its marks are gone, files unguarded")
    else:
        print(f"no guardian runs for {args.state_dir}")
    return 0


def _cmd_guardian_status(args: argparse.Namespace) -> int:
    from agent.sensors.files import guardian  # noqa: PLC0415 - see _cmd_guardian_stop

    now = guardian.status(args.state_dir)
    if now is None:
        print(f"no guardian runs for {args.state_dir}")
        return 1
    agent = now.get("agent") or "none (the guardian answers opens itself)"
    print(f"guardian pid {now.get('pid')}; agent: {agent}")
    return 0


# The decision engine and reference Casbin (agent.decision.tools) are imported by the
# commands that use them, so that `run` without a file guard does not carry them.
def _cmd_explain(args: argparse.Namespace) -> int:
    from baomi.policy.policyset import PolicySet  # noqa: PLC0415 - see above

    from agent.decision.tools import explain  # noqa: PLC0415

    policyset = PolicySet.load(args.policies)
    # Only an existing file has a label; a path that names none is judged unlabelled.
    exists = Path(args.path).exists()
    key = _label_key_to_judge(args) if exists else None
    pre_content = args.action == "write" and exists and _pre_content_here(args.path)
    print(
        escape(explain(
            policyset, args.user, args.path, args.action, args.exe, key=key,
            pre_content=pre_content,
        ), lines=True)  # a path on disk may hold any character but / and NUL
    )  # fmt: skip
    return 0


def _pre_content_here(path: str) -> bool:
    """Whether this host decides writes of labelled files at ``path`` (pre-content
    events: kernel and filesystem); a note on stderr when it cannot be told."""
    from agent.sensors.files.fanotify import pre_content_problem  # noqa: PLC0415

    where = Path(path) if Path(path).is_dir() else Path(path).parent
    problem = pre_content_problem([str(where)])
    if problem:
        print(f"note: writes are not decided by the file guard here: {problem}", file=sys.stderr)
    return not problem


def _cmd_policy_test(args: argparse.Namespace) -> int:
    from baomi.policy.policyset import PolicySet  # noqa: PLC0415 - see _cmd_explain

    from agent.decision.tools import policy_test  # noqa: PLC0415

    policyset = PolicySet.load(args.policies)
    mismatches = policy_test(policyset, args.table, load_key=lambda: _label_key_to_judge(args))
    for m in mismatches:
        print(escape(str(m)))
    if mismatches:
        print(f"{len(mismatches)} row(s) of {args.table} do not decide as expected")
        return 1
    print(f"{args.table}: every row decides as expected (policy {policyset.version[:12]})")
    return 0


def _add_policies_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policies",
        type=Path,
        default=DEFAULT_POLICIES,
        help=f"directory of model.conf, policy.csv, subjects.toml (default ./{DEFAULT_POLICIES})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    p = HelpfulParser(prog="baomi-agent", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    add_config_option(p, DEFAULT_CONFIG)
    p.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help="certificates, label key, spool, journals and the policy in force "
        "(every subcommand uses it; give it before the subcommand)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser(
        "enroll",
        help="enrol this host with a single-use token (over the network, or by file)",
        description="Enrol this host. Over the network: --collector, --token, --ca. An "
        "offline host, by files on a registered stick: --token-file T --csr-out R (the "
        "host key stays here), then, with the collector's answer, --cert-file C.",
    )
    e.add_argument(
        "--collector",
        action=AppendOrOne,
        metavar="HOST:PORT",
        help="the collector's agent port (repeatable: several collectors or load "
        "balancers; the agent tries them in this order and fails over by itself)",
    )
    e.add_argument("--token", help="the single-use token from the collector")
    e.add_argument("--ca", type=Path, help="the collector's CA certificate (PEM)")
    e.add_argument(
        "--enroll-address",
        action=AppendOrOne,
        metavar="HOST:PORT",
        help="enrolment port (repeatable; tried in turn while one is down; default: each "
        "--collector's port + 1)",
    )
    e.add_argument(
        "--token-file",
        type=Path,
        help="offline: the file of 'baomi-collector enroll-file token'; writes --csr-out",
    )
    e.add_argument(
        "--csr-out", type=Path, help="offline: where the request for the collector is written"
    )
    e.add_argument(
        "--cert-file",
        type=Path,
        help="offline: the certificate 'baomi-collector enroll-file sign' wrote: installed",
    )
    e.set_defaults(func=_cmd_enroll)

    r = sub.add_parser("run", help="run the agent")
    r.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    r.add_argument(
        "--offline",
        action="store_true",
        help="a host with no collector (涉密单机): guard and record locally, no certificate "
        "needed; events stay in the spool until exported ('baomi-agent export') and "
        "confirmed imported",
    )
    r.add_argument(
        "--host-id",
        help="--offline, before enrolment: the id to record under (default: the host "
        "name); the token file must name the same",
    )
    r.add_argument(
        "--collector",
        action=AppendOrOne,
        default=[],
        metavar="HOST:PORT",
        help="stream to these collectors instead of those given at enrolment (repeatable; "
        "tried in this order, the next after a fault)",
    )
    r.add_argument("--spool-max-mb", type=int, default=1024, help="spool size that raises an alarm")
    r.add_argument("--batch-events", type=int, default=500, help="events sent per batch at most")
    r.add_argument(
        "--protect",
        type=Path,
        action="append",
        default=[],
        help="a directory of classified files to guard (repeatable)",
    )
    r.add_argument(
        "--policies",
        type=Path,
        default=None,
        help="local policy directory (model.conf, policy.csv, subjects.toml, and for "
        "--usb devices.rules and usb-registry.toml); a signed bundle from the collector "
        "takes precedence (default: STATE/policy, where the collector's bundles land)",
    )
    r.add_argument(
        "--network",
        action="store_true",
        help="watch links, addresses and routes for illicit outbound links",
    )
    r.add_argument(
        "--gateway",
        action="append",
        default=[],
        help="a gateway a default route may use (repeatable; none: no default route)",
    )
    r.add_argument(
        "--enforce-network",
        action="store_true",
        help="bring offending links down and delete offending default routes",
    )
    r.add_argument("--meeting-room", help="run the pre-meeting check of this room by itself")
    r.add_argument(
        "--rooms",
        type=Path,
        default=Path("policies/rooms.toml"),
        help="the meeting rooms and their devices (relative to the working directory)",
    )
    r.add_argument(
        "--meetings",
        type=Path,
        default=Path("policies/meetings.toml"),
        help="local meeting schedule, relative to the working directory; the collector's "
        "(in its policy bundle) takes precedence",
    )
    r.add_argument(
        "--subjects",
        type=Path,
        default=Path("policies/subjects.toml"),
        help="local register of people, relative to the working directory; the "
        "collector's takes precedence",
    )
    r.add_argument(
        "--meeting-sweep",
        type=Path,
        help="the room's latest RF sweep (C5, C10): the CSV that e.g. 'rtl_power -f "
        "400M:1000M:100k -i 10 -e 5m FILE' writes; it must cover 470-790 MHz and the "
        "room's jammer_bands",
    )
    r.add_argument(
        "--meeting-lead-min",
        type=float,
        default=30.0,
        help="minutes before each meeting's start the check runs",
    )
    r.add_argument(
        "--usb",
        action="store_true",
        help="decide every USB device: registered sticks only, no recorders or phones; "
        "reads devices.rules and usb-registry.toml from --policies",
    )
    r.add_argument(
        "--unsafe-usb-report-only",
        action="store_true",
        help="record USB decisions without enforcing them (weakens enforcement)",
    )
    r.add_argument(
        "--unsafe-no-guardian",
        action="store_true",
        help="guard files without a guardian process: a killed agent leaves them "
        "unguarded until it restarts (weakens enforcement)",
    )
    r.add_argument(
        "--follow-filesystems",
        action="store_true",
        help="label what a process that read a labelled file writes anywhere on the "
        "protected trees' filesystems, not only in the trees (watches every write there)",
    )
    r.add_argument(
        "--no-pre-content",
        action="store_true",
        help="leave writes and truncations of labelled files to file modes and ACLs "
        "alone, as on kernels before 6.14 (by default they are decided and recorded "
        "through fanotify pre-content events where the kernel has them)",
    )
    r.add_argument(
        "--process",
        action="store_true",
        help="watch for recording software and processes holding capture devices",
    )
    r.add_argument(
        "--deadline-ms",
        type=float,
        default=50.0,
        help="longest a decision may take before the open is denied",
    )
    r.set_defaults(func=_cmd_run)

    x = sub.add_parser(
        "export",
        help="offline host: write the events not yet exported to a file, signed",
        description="Write this host's events not yet exported, chained and signed by the "
        "host key, to --out (a registered stick) and record the export as an event. "
        "Exported events stay in the spool until 'baomi-collector import' stored them and "
        "--forget-through confirms it, so a lost stick loses nothing: export --again.",
        epilog="exit status: 0 written (or forgotten), 2 refused (the message says why)",
    )
    x.add_argument("--out", type=Path, help="the export file to write")
    x.add_argument(
        "--again",
        action="store_true",
        help="export every event not confirmed imported, exported before or not (a "
        "lost stick; the collector stores each event once)",
    )
    x.add_argument(
        "--forget-through",
        type=int,
        metavar="SEQ",
        help="the collector's import said it stores this host's events through SEQ: the "
        "spool may let them go (the last 10000 are kept anyway)",
    )
    x.set_defaults(func=_cmd_export)

    ev = sub.add_parser(
        "events",
        help="list this host's own record (the spool), newest first",
        description="This host's events from its spool: every event not confirmed "
        "imported or acknowledged, and the last 10000 that were. Heartbeats (INFO "
        "agent_status) are left out unless asked for, as at the collector.",
    )
    ev.add_argument("--limit", type=int, default=100, help="newest events listed at most")
    ev.add_argument("--kind", help="only this kind: file_access, device, tamper, ...")
    ev.add_argument("--heartbeats", action="store_true", help="list heartbeats too")
    ev.add_argument("--json", action="store_true", help="one JSON object per line")
    ev.set_defaults(func=_cmd_events)

    rp = sub.add_parser(
        "report",
        help="this host's inspection record from its spool, for an officer on site",
    )
    rp.set_defaults(func=_cmd_report)

    lab = sub.add_parser("label", help="classification labels on files (user.baomi.* xattrs)")
    lsub = lab.add_subparsers(dest="label_command", required=True)
    ls = lsub.add_parser(
        "set",
        help="label a file (attributes not given are removed); its home is its present path",
        description="Label a file, sealed with this host's label key. The file's home -- "
        "where it is now -- is sealed into the label: policy rules match the home, "
        "whatever path the file is later reached through.",
    )
    ls.add_argument("path", help="the file (with -r, the directory)")
    ls.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="label PATH (a directory), every directory and regular file below it "
        "(each with its own home); symlinks are not followed",
    )
    ls.add_argument("--level", required=True, help="绝密/机密/秘密/内部 or top-secret/...")
    ls.add_argument("--until", help="保密期限, YYYY-MM-DD; declassified after it")
    ls.add_argument("--scope", help="need-to-know: dept:NAME,user:NAME,role:NAME")
    ls.add_argument("--id", help="classification record the label comes from")
    ls.set_defaults(func=_cmd_label_set)
    lreq = lsub.add_parser(
        "request",
        help="ask for a file to be classified, changed or declassified (定密/变更/解密申请)",
        description="Send a request to the collector (spooled while offline). An approver "
        "decides it in the console; on approval the signed label order is applied here, "
        "with the register id in the label.",
    )
    lreq.add_argument("path", help="the file")
    lreq.add_argument(
        "--action",
        choices=("classify", "change", "declassify"),
        default="classify",
        help="定密 classify (default), 变更 change the level, or 解密 declassify",
    )
    lreq.add_argument("--level", help="绝密/机密/秘密 or top-secret/... (classify, change)")
    lreq.add_argument("--until", help="保密期限, YYYY-MM-DD")
    lreq.add_argument("--scope", help="need-to-know: dept:NAME,user:NAME,role:NAME")
    lreq.add_argument("--basis", help="定密依据: the rule or item the level rests on")
    lreq.add_argument("--title", help="the item's title in the register")
    lreq.add_argument("--responsible", help="定密责任人")
    lreq.add_argument("--id", help="change, declassify: the register id (default: the label's)")
    lreq.set_defaults(func=_cmd_label_request)
    lshow = lsub.add_parser("show", help="print a file's label")
    lshow.add_argument("path", help="the file")
    lshow.set_defaults(func=_cmd_label_show)
    lclear = lsub.add_parser("clear", help="remove a file's label")
    lclear.add_argument("path", help="the file")
    lclear.set_defaults(func=_cmd_label_clear)

    d = sub.add_parser(
        "destroy",
        help="destroy a classified file under a destruction order (销毁), recorded",
        description="Overwrite a labelled file once with random data, remove it and record "
        "it, under a destruction order issued in the register console for its entry. The "
        "person must be the one the order names and allowed 'delete' by the policy. The "
        "running agent does it (the file guard lets only the agent write a guarded file); "
        "with no agent running, this command does it. Overwriting does not reach copies "
        "kept by SSD wear levelling, journals, snapshots or backups: see policies/README.md.",
    )
    d.add_argument("path", help="the file")
    d.add_argument("--order", required=True, help="the destruction order id (order-...)")
    d.add_argument("--by", required=True, help="the person carrying it out (login name)")
    d.add_argument(
        "--policies",
        type=Path,
        help="with no agent running: the policy directory (default STATE_DIR/policy)",
    )
    d.set_defaults(func=_cmd_destroy)

    x = sub.add_parser("explain", help="what the file guard decides for one access, and why")
    x.add_argument("--user", required=True, help="login name, uid or uid:N")
    x.add_argument("--path", required=True, help="the file (need not exist: then unlabelled)")
    x.add_argument("--action", required=True, help="read, write, execute, delete or export")
    x.add_argument("--exe", help="executable that opens the file")
    _add_policies_option(x)
    x.set_defaults(func=_cmd_explain)

    pol = sub.add_parser("policy", help="check the file policy")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    pt = psub.add_parser("test", help="run a table of expected decisions; exit 1 on mismatch")
    pt.add_argument(
        "table", type=Path, help="CSV: user, path-or-label-spec, action, allow|deny[, exe[, date]]"
    )
    _add_policies_option(pt)
    pt.set_defaults(func=_cmd_policy_test)
    g = sub.add_parser(
        "guardian", help="the process that keeps protected files denied while the agent is down"
    )
    gsub = g.add_subparsers(dest="guardian_command", required=True)
    gstop = gsub.add_parser(
        "stop", help="release the guardian: stop the agent first; files are unguarded after"
    )
    gstop.set_defaults(func=_cmd_guardian_stop)
    gstatus = gsub.add_parser("status", help="the guardian's pid and the agent it watches")
    gstatus.set_defaults(func=_cmd_guardian_status)
    devices_cli.add_parser(sub)
    meeting_cli.add_parser(sub)
    return p


def lean_argv() -> list[str]:
    """How ``run`` restarts itself: ``python -P -OO -m agent`` with this process's
    arguments, and its interpreter's isolation flags (``-I``, as the Debian package's
    wrapper gives, ``-E``, ``-s``, ``-B``), which a restart must not drop."""
    flags = sys.flags
    carried = (
        ["-I"]
        if flags.isolated
        else [
            *(["-E"] if flags.ignore_environment else []),
            *(["-s"] if flags.no_user_site else []),
        ]
    )
    if flags.dont_write_bytecode and (flags.isolated or flags.ignore_environment):
        carried.append("-B")  # else PYTHONDONTWRITEBYTECODE carries it
    return [sys.executable, *carried, "-P", "-OO", "-m", "agent", *sys.argv[1:]]


PR_SET_NAME = 15  # prctl(2)


def _name_process() -> None:
    """Call this process, and every thread it starts after, ``baomi-agent`` (ps, top,
    pgrep), whatever interpreter runs it: the -OO restart runs ``python``."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux's libc: cosmetic only
        ctypes.CDLL(None).prctl(PR_SET_NAME, b"baomi-agent", 0, 0, 0)


def _run_lean() -> None:
    """Restart this process as :func:`lean_argv` says.

    ``run`` keeps every module it imports for as long as the host is up, and their
    docstrings are ~1 MB of its ~50 MB resident; ``-OO`` leaves them (and asserts,
    which the agent uses only to narrow types) out. ``exec`` keeps the pid, so a service
    manager or a parent waiting on it sees no change; ``-P`` keeps the working directory
    out of the module path of a process that runs as root.
    """
    if sys.flags.optimize >= 2 or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, lean_argv())  # noqa: S606 - the interpreter itself, no shell
    except OSError as e:  # runs as it is, only larger
        print(f"baomi-agent: cannot restart as {sys.executable} -OO ({e})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``baomi-agent``."""
    try:
        args = parse_with_config(
            build_parser(), sys.argv[1:] if argv is None else argv, DEFAULT_CONFIG
        )
    except ConfigFileError as e:
        print(f"baomi-agent: {e}", file=sys.stderr)
        return 2
    if argv is None and args.func is _cmd_run:
        _run_lean()
        _name_process()
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
