"""Account lifecycle in the console and on the command line, and the takeover it stops."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from collector.console import ratelimit
from collector.console.auth import create_account, hash_password
from collector.store import Store
from tests.collector_harness import RunningCollector
from tests.integration.console.conftest import PASSWORD, Console
from tests.integration.console.web import Client

NEW_PASSWORD = "a-new-long-password"  # noqa: S105 - a test account's
CLI_TIMEOUT_S = 60
ROUNDS = 20  # of two simultaneous disables


def _one_time(page: str) -> str:
    return page.split('<pre id="new-password">')[1].split("</pre>", maxsplit=1)[0]


def _actions(console: Console, action: str) -> list[object]:
    return [
        e.console_action  # type: ignore[attr-defined]
        for e in console.audit()
        if e.console_action.action == action  # type: ignore[attr-defined]
    ]


def _first_login(console: Console, name: str, one_time: str) -> Client:
    """Log in with a one-time password and replace it, as the person would."""
    c = console.client()
    assert c.login(name, one_time).headers["location"] == "/password"
    c.refresh_csrf()
    form = {"current": one_time, "new": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    assert c.post("/password", form).status == 303
    c.refresh_csrf()
    return c


def test_sysadmin_cannot_take_over_a_granted_account(console: Console) -> None:
    """The attack of issue 13: the sysadmin creates carol, the secadmin grants her
    auditor, the sysadmin logs in as carol with the password it knew. It fails."""
    sam, sue = console.as_role("sysadmin"), console.as_role("secadmin")
    created = sam.post("/accounts/new", {"name": "carol"})
    assert created.status == 303 and "new-password" not in created.text
    # Even a password the sysadmin learned somehow before the grant stops working.
    known = "sysadmin-knows-this-one"
    console.store.set_password("carol", hash_password(known), must_change=False)
    granted = sue.post("/accounts/grant", {"name": "carol", "role": "auditor"})
    assert granted.status == 200
    one_time = _one_time(granted.text)
    assert one_time not in sam.get("/accounts").text
    assert console.client().login("carol", known).status == 401
    # The person logs in with the one-time password and must replace it.
    carol = _first_login(console, "carol", one_time)
    assert carol.get("/audit").status == 200
    # A second grant (after a revoke) ends carol's session and earlier passwords too.
    assert sue.post("/accounts/revoke", {"name": "carol"}).status == 303
    assert carol.get("/audit").status == 303  # session ended
    again = sue.post("/accounts/grant", {"name": "carol", "role": "auditor"})
    assert again.status == 200
    assert console.client().login("carol", NEW_PASSWORD).status == 401
    # Who did what, from where, is on record.
    grant = _actions(console, "role_grant")[0]
    assert (grant.actor, grant.target, grant.client) == ("sue", "carol", "127.0.0.1")  # type: ignore[attr-defined]
    assert grant.user_agent.startswith("Python-urllib")  # type: ignore[attr-defined]


def test_every_console_action_records_the_client(console: Console) -> None:
    c = console.client()
    long_agent = "Mozilla/5.0 " + "x" * 5000
    page = c.get("/login")
    token = page.text.split('name="csrf" value="')[1].split('"')[0]
    resp = c.request(
        "POST",
        "/login",
        {"csrf": token, "name": "aud", "password": PASSWORD},
        headers={"User-Agent": long_agent},
    )
    assert resp.status == 303
    c.refresh_csrf()
    audit = c.get("/audit").text
    assert "127.0.0.1" in audit
    actions = [e.console_action for e in console.audit()]  # type: ignore[attr-defined]
    web = [a for a in actions if not a.actor.startswith("cli:")]  # the fixture's accounts
    assert web and all(a.client == "127.0.0.1" for a in web)
    assert all(a.client == "cli" for a in actions if a.actor.startswith("cli:"))
    login = _actions(console, "login")[-1]
    assert login.user_agent == long_agent[:300]  # type: ignore[attr-defined]


def test_secadmin_manages_the_lifecycle(console: Console) -> None:
    sue = console.as_role("secadmin")
    sam = console.as_role("sysadmin")
    create_account(console.store, "aud2", role="auditor", by="t", password=PASSWORD)
    aud2 = console.client()
    assert aud2.login("aud2", PASSWORD).status == 303
    # 三员分立: the sysadmin creates, only the secadmin changes roles and states.
    for action in ("disable", "enable", "revoke", "reset", "unlock"):
        assert sam.post(f"/accounts/{action}", {"name": "aud2"}).status == 403
    # Disable: the session ends, and the right password answers as a wrong one.
    assert sue.post("/accounts/disable", {"name": "aud2"}).status == 303
    assert aud2.get("/").status == 303
    assert console.client().login("aud2", PASSWORD).status == 401
    assert 'id="account-aud2"' in sue.get("/accounts").text
    assert console.store.account("aud2").disabled  # type: ignore[union-attr]
    assert sue.post("/accounts/enable", {"name": "aud2"}).status == 303
    assert console.client().login("aud2", PASSWORD).status == 303
    # Reset: a one-time password for the secadmin to hand over; the old one is gone.
    reset = sue.post("/accounts/reset", {"name": "aud2"})
    assert reset.status == 200
    assert console.client().login("aud2", PASSWORD).status == 401
    _first_login(console, "aud2", _one_time(reset.text))
    # Unlock: clears the wait that failures put on the name.
    guesser = console.client()
    for _ in range(ratelimit.NAME_FREE):
        guesser.login("aud2", "wrong-password-x")
    assert console.client().login("aud2", NEW_PASSWORD).status == 429
    assert "aud2" in sue.get("/accounts").text
    assert sue.post("/accounts/unlock", {"name": "aud2"}).status == 303
    assert console.client().login("aud2", NEW_PASSWORD).status == 303
    # Revoke: the role goes, so does the session.
    assert sue.post("/accounts/revoke", {"name": "aud2"}).status == 303
    assert console.store.account("aud2").role is None  # type: ignore[union-attr]
    recorded = {a.action for a in map(_ca, console.audit()) if a.target == "aud2"}
    assert {
        "account_disable",
        "account_enable",
        "password_reset",
        "account_unlock",
        "role_revoke",
    } <= recorded


def _ca(event: object) -> object:
    return event.console_action  # type: ignore[attr-defined]


def test_the_last_enabled_account_of_a_role_stays(console: Console) -> None:
    sue = console.as_role("secadmin")
    for action in ("disable", "revoke"):
        resp = sue.post(f"/accounts/{action}", {"name": "aud"})
        assert resp.status == 400 and "last enabled auditor" in resp.text
    # Not even the secadmin itself.
    assert "last enabled secadmin" in sue.post("/accounts/disable", {"name": "sue"}).text
    assert not console.store.account("aud").disabled  # type: ignore[union-attr]
    refused = _actions(console, "account_disable")
    assert refused and not refused[0].ok  # type: ignore[attr-defined]
    # With a second auditor, the first may go; then the second is the last.
    create_account(console.store, "aud2", role="auditor", by="t", password=PASSWORD)
    assert sue.post("/accounts/disable", {"name": "aud"}).status == 303
    assert sue.post("/accounts/revoke", {"name": "aud2"}).status == 400
    assert "unknown-x" in sue.post("/accounts/disable", {"name": "unknown-x"}).text


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``baomi-collector`` as an operator does."""
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_user_commands_work_and_are_audited(console: Console, store_url: str) -> None:
    def user(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("user", *args, "--store", store_url)

    create_account(console.store, "dan", role=None, by="sam", password=PASSWORD)
    listed = user("list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [
        ["aud", "auditor"],
        ["dan", "-"],
        ["sam", "sysadmin"],
        ["sue", "secadmin"],
    ]
    granted = user("grant", "dan", "--role", "auditor")
    assert granted.returncode == 0, granted.stderr
    one_time = granted.stdout.split("one-time password: ")[1].strip()
    assert console.client().login("dan", PASSWORD).status == 401
    dan = _first_login(console, "dan", one_time)
    assert user("disable", "dan").returncode == 0
    assert dan.get("/").status == 303  # its session ended
    assert "disabled" in user("list").stdout
    assert user("enable", "dan").returncode == 0
    reset = user("reset", "dan")
    assert reset.returncode == 0
    _first_login(console, "dan", reset.stdout.split("one-time password: ")[1].strip())
    for _ in range(ratelimit.NAME_FREE):
        console.client().login("dan", "wrong-password-x")
    assert console.client().login("dan", NEW_PASSWORD).status == 429
    assert user("unlock", "dan").returncode == 0
    assert console.client().login("dan", NEW_PASSWORD).status == 303
    assert user("revoke", "dan").returncode == 0
    # The last of a role, and mistakes, are refused with what to do.
    last = user("revoke", "aud")
    assert last.returncode == 2 and "last enabled auditor" in last.stderr
    assert "no account is named 'nobody'" in user("disable", "nobody").stderr
    assert "has no role" in user("reset", "dan").stderr
    # Each command is recorded in the chain by the running collector, as from "cli".
    want = {
        "role_grant",
        "account_disable",
        "account_enable",
        "password_reset",
        "account_unlock",
        "role_revoke",
    }
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done = [a for a in map(_ca, console.audit()) if a.action in want]  # type: ignore[attr-defined]
        recorded = {a.action for a in done}  # type: ignore[attr-defined]
        if want <= recorded and not console.store.pending_actions():
            break
        time.sleep(0.3)
    assert want <= {a.action for a in done}  # type: ignore[attr-defined]
    assert len([a for a in done if a.ok]) == len(want)  # type: ignore[attr-defined] # each once
    # The refused ones are on record as refused, with the reason.
    refused = {(a.action, a.target) for a in done if not a.ok}  # type: ignore[attr-defined]
    assert refused == {
        ("role_revoke", "aud"),
        ("account_disable", "nobody"),
        ("password_reset", "dan"),
    }
    assert all(a.actor.startswith("cli:") and a.client == "cli" for a in done)  # type: ignore[attr-defined]
    assert {a.target for a in done if a.ok} == {"dan"}  # type: ignore[attr-defined]
    assert console.store.pending_actions() == []


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_password_change_guessing_waits_too(console: Console) -> None:
    """Someone at an unattended logged-in browser cannot guess the current password."""
    aud = console.as_role("auditor")
    form = {"current": "wrong-password-x", "new": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    statuses = [aud.post("/password", form).status for _ in range(ratelimit.NAME_FREE + 1)]
    assert statuses == [400] * (ratelimit.NAME_FREE - 1) + [429, 429]
    # While waiting the right one is not checked either; after the wait it works.
    right = {**form, "current": PASSWORD}
    assert aud.post("/password", right).status == 429
    time.sleep(1.2)
    assert aud.post("/password", right).status == 303
    refused = [a for a in map(_ca, console.audit()) if a.action == "password_change"]
    assert [a.ok for a in refused] == [False] * (ratelimit.NAME_FREE + 2) + [True]  # type: ignore[attr-defined]


def test_two_administrators_cannot_take_out_the_last_two_at_once(store: Store) -> None:
    """Disabling the only two auditors at the same moment leaves one of them enabled."""
    for name in ("aud1", "aud2"):
        create_account(store, name, role="auditor", by="t", password=PASSWORD)
    barrier = threading.Barrier(2)  # reusable: both start each round together

    def take_out(name: str) -> bool:
        barrier.wait()
        return store.disable_account(name, "t", 1)

    for _ in range(ROUNDS):
        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(take_out, ["aud1", "aud2"]))
        assert done.count(True) == 1
        enabled = [a.name for a in store.accounts() if a.role == "auditor" and not a.disabled]
        assert len(enabled) == 1
        store.enable_account("aud1")
        store.enable_account("aud2")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_collector_without_console_records_the_command_lines_work(
    store: Store, store_url: str, pki_dir: Path
) -> None:
    """Accounts are kept from the command line on a collector that serves no console
    too: what ``baomi-collector user`` did reaches the chain all the same."""
    running = RunningCollector(store, pki_dir, checkpoint_seconds=3600)
    try:
        assert cli("user", "add", "ops", "--role", "sysadmin", "--store", store_url).returncode == 0
        assert (
            cli("user", "add", "ops2", "--role", "sysadmin", "--store", store_url).returncode == 0
        )
        assert cli("user", "disable", "ops2", "--store", store_url).returncode == 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            actions = [
                events_pb2.Event.FromString(r.body).console_action
                for r in store.chain("_collector")
                if r.kind == "console_action"
            ]
            if len(actions) >= 3 and not store.pending_actions():
                break
            time.sleep(0.3)
        assert [(a.action, a.target, a.client) for a in actions] == [
            ("account_create", "ops", "cli"),
            ("account_create", "ops2", "cli"),
            ("account_disable", "ops2", "cli"),
        ]
    finally:
        running.stop()
