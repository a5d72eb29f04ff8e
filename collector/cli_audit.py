"""What ``baomi-collector user`` did, recorded by the running collector.

The command line cannot append to the collector's chain while the collector runs (two
writers would fork it), so it leaves its work in the store: accounts it made (their
``created_by`` starts with "cli") and account actions it queued. The collector records
them in its chain as console actions from the client "cli" -- whether or not it serves
the web console -- each once, oldest first. An import of an offline host's export
(:mod:`collector.offline`) stored that host's events itself: its head is taken from
the store, so the next checkpoint signs them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from collector.ingest import CollectorChain
from collector.offline import IMPORT_ACTION
from collector.store.base import Store

_logger = logging.getLogger(__name__)

CLI_AUDITED = "cli_accounts_audited_us"  # setting: newest CLI-made account already recorded
AUDIT_SECONDS = 2.0  # between looks at what the command line left


async def record_cli_work(store: Store, chain: CollectorChain) -> int:
    """Record what the command line left since the last look; how many actions."""
    return await _accounts(store, chain) + await _actions(store, chain)


async def run_forever(
    store: Store, chain: CollectorChain, leads: Callable[[], Awaitable[bool]] | None = None
) -> None:
    """Look every AUDIT_SECONDS until cancelled; with ``leads``, only while it answers
    True (of collectors sharing a store, the one that signs checkpoints records, so an
    action is not recorded once by each)."""
    while True:
        try:
            if leads is None or await leads():
                await record_cli_work(store, chain)
        except Exception:
            _logger.exception("recording command-line actions failed; retrying")
        await asyncio.sleep(AUDIT_SECONDS)


async def _accounts(store: Store, chain: CollectorChain) -> int:
    accounts, settings = await asyncio.gather(
        asyncio.to_thread(store.accounts), asyncio.to_thread(store.settings)
    )
    done = int(settings.get(CLI_AUDITED, "0"))
    new = sorted(
        (a for a in accounts if a.created_by.startswith("cli") and a.created_us > done),
        key=lambda a: a.created_us,
    )
    for a in new:
        await chain.console_action(
            actor=a.created_by,
            role="",
            action="account_create",
            target=a.name,
            detail=f"role {a.role or '-'} (command line)",
            client="cli",
        )
        await asyncio.to_thread(store.set_setting, CLI_AUDITED, str(a.created_us))
    return len(new)


async def _actions(store: Store, chain: CollectorChain) -> int:
    pending = await asyncio.to_thread(store.pending_actions)
    for a in pending:
        if a.action == IMPORT_ACTION and a.ok:  # the import stored events: checkpoint them
            await chain.follow_store(a.target)
        await chain.console_action(
            actor=a.actor,
            role="",
            action=a.action,
            target=a.target,
            detail=f"{a.detail} (command line)".lstrip(),
            ok=a.ok,
            client="cli",
        )
        # Recorded before dropped: a crash in between records it twice, never not.
        await asyncio.to_thread(store.drop_action, a.id)
    return len(pending)
