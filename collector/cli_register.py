"""``baomi-collector register``: the classification register (定密台账) on the command line.

Read-only: the register is built from the ``register_step`` events in the store, so it
can be listed with the collector running or not. Decisions are taken in the console.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from collector.errors import CollectorError
from collector.register import STATUSES, Entry, Register
from collector.store import open_store


def _when(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if us else "-"


def _as_dict(e: Entry) -> dict[str, object]:
    return {
        "register_id": e.register_id,
        "title": e.title,
        "level": e.level,
        "level_name": e.level_name,
        "until": e.until,
        "scope": list(e.scope),
        "basis": e.basis,
        "responsible": e.responsible,
        "requester": e.requester,
        "approver": e.approver,
        "host": e.host,
        "home": e.home,
        "content_hash": e.content_hash,
        "status": e.status,
        "created": _when(e.created_us),
        "updated": _when(e.updated_us),
        "pending": e.pending.action if e.pending is not None else "",
        "history": [
            {"time": _when(h.time_us), "step": h.step, "actor": h.actor, "detail": h.detail,
             "event": f"_collector/{h.seq}"}
            for h in e.history
        ],
    }  # fmt: skip


def _load(args: argparse.Namespace) -> Register:
    store = open_store(args.store)
    try:
        return Register.load(store)
    finally:
        store.close()


def _cmd_list(args: argparse.Namespace) -> int:
    entries = _load(args).listing(args.status)
    if args.json:
        print(json.dumps([_as_dict(e) for e in entries], ensure_ascii=False, indent=1))
        return 0
    print(f"{'ID':<20} {'LEVEL':<4} {'UNTIL':<10} {'STATUS':<12} {'HOST':<12} PATH / TITLE")
    for e in entries:
        print(
            f"{e.register_id:<20} {e.level_name:<4} {e.until or '-':<10} {e.status:<12} "
            f"{e.host:<12} {e.home}  {e.title}"
        )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    entry = _load(args).entries.get(args.id)
    if entry is None:
        raise CollectorError(
            f"no register entry {args.id!r}; 'baomi-collector register list' shows them"
        )
    data = _as_dict(entry)
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=1))
        return 0
    for name, value in data.items():
        if name != "history":
            print(f"{name:<13} {value}")
    print("history:")
    for h in data["history"]:  # type: ignore[attr-defined]
        print(f"  {h['time']}  {h['step']:<9} {h['actor']:<20} {h['detail']}  ({h['event']})")
    return 0


def add_register_commands(
    sub: argparse._SubParsersAction[Any],
    with_store: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """The ``register`` subcommands."""
    reg = sub.add_parser("register", help="the classification register (定密台账)")
    reg_sub = reg.add_subparsers(dest="register_command", required=True)
    ls = with_store(reg_sub.add_parser("list", help="register entries, newest first"))
    ls.add_argument("--status", choices=STATUSES, help="only entries of this status")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    ls.set_defaults(func=_cmd_list)
    show = with_store(reg_sub.add_parser("show", help="one entry and its history"))
    show.add_argument("id", help="the register id (DM-...)")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.set_defaults(func=_cmd_show)
