"""Store conformance: every backend behaves the same, checked against real databases.

Each test runs once per backend through the ``store`` / ``store_url`` fixtures
(``tests/conftest.py``); the PostgreSQL runs use a throwaway cluster.
"""

from __future__ import annotations

import hashlib
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.errors import StoreError
from collector.store import EventQuery, EventRow, Store, TokenRow, open_store
from collector.store.postgres import PostgresStore
from collector.store.sqlite import SQLiteStore

T0 = 1_700_000_000_000_000  # an event time in microseconds since the epoch
SECOND = 1_000_000  # microseconds
DB_ERRORS = (sqlite3.Error, psycopg.Error)  # what a backend raises for a refused write

Key = tuple[str, int]  # (host_id, seq)


def ev(
    host: str, seq: int, *, kind: str = "file.open", t: int | None = None, body: bytes | None = None
) -> EventRow:
    """An event whose hash really is the SHA-256 of its body."""
    if body is None:
        body = f"{host}/{seq}/{kind}".encode() * 10  # ~200 bytes, distinct per event
    time_us = T0 + seq * SECOND if t is None else t
    return EventRow(host, seq, kind, 3, time_us, time_us + 5, hashlib.sha256(body).digest(), body)


def keys(rows: Sequence[EventRow]) -> list[Key]:
    return [(r.host_id, r.seq) for r in rows]


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


@contextmanager
def raw_connection(url: str) -> Iterator[Any]:
    """A connection that bypasses the store class entirely, autocommitting."""
    if is_postgres(url):
        with psycopg.connect(url, autocommit=True) as pg:
            yield pg
    else:
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)) as lite:
            yield lite


only_postgres = pytest.mark.parametrize(
    "store_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

# -- append ------------------------------------------------------------------------

A1, A2, A3, A4 = (ev("host-a", s) for s in (1, 2, 3, 4))
B1 = ev("host-b", 1)

APPEND_CASES: list[tuple[str, list[list[EventRow]], list[int], int]] = [
    # (name, batches in order, new rows each batch reports, events stored at the end)
    ("one fresh batch", [[A1, A2, A3]], [3], 3),
    ("same batch twice", [[A1, A2], [A1, A2]], [2, 0], 2),
    ("batch overlapping stored rows", [[A1, A2], [A2, A3, A1, A4]], [2, 2], 4),
    ("duplicate inside one batch", [[A1, A2, A1]], [2], 2),
    ("same seq on another host", [[A1], [B1]], [1, 1], 2),
    ("empty batch", [[], [A1], []], [0, 1, 0], 1),
]


@pytest.mark.parametrize(
    ("batches", "reported", "total"),
    [pytest.param(b, r, t, id=name) for name, b, r, t in APPEND_CASES],
)
def test_append_reports_new_rows_and_skips_stored(
    store: Store, batches: list[list[EventRow]], reported: list[int], total: int
) -> None:
    assert [store.append(b) for b in batches] == reported
    assert store.count() == total


def test_append_keeps_the_first_stored_row_for_a_key(store: Store) -> None:
    first, clash = ev("host-a", 1, body=b"first"), ev("host-a", 1, body=b"clash")
    assert store.append([first, clash]) == 1  # within a batch: the first wins
    assert store.append([clash]) == 0  # across batches: the stored row stays
    assert list(store.chain("host-a")) == [first]


BAD_ROWS: list[tuple[str, EventRow]] = [
    ("no body", replace(ev("host-a", 9), body=None)),  # type: ignore[arg-type]
    ("no hash", replace(ev("host-a", 9), hash=None)),  # type: ignore[arg-type]
    ("no host", replace(ev("host-a", 9), host_id=None)),  # type: ignore[arg-type]
    ("no kind", replace(ev("host-a", 9), kind=None)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("bad", [pytest.param(r, id=n) for n, r in BAD_ROWS])
def test_append_is_all_or_nothing(store: Store, bad: EventRow) -> None:
    store.append([A1])
    with pytest.raises(DB_ERRORS):
        store.append([A2, A3, bad, A4])
    assert store.count() == 1
    assert store.head("host-a") == (1, A1.hash)
    # The failed batch left no transaction open: the next one goes through.
    assert store.append([A2, A3]) == 2


def test_append_from_many_threads(store: Store) -> None:
    def send(host: str) -> int:
        return sum(store.append([ev(host, s) for s in range(k, k + 50)]) for k in range(1, 201, 50))

    hosts = [f"host-{i}" for i in range(6)]
    with ThreadPoolExecutor(len(hosts)) as pool:
        assert list(pool.map(send, hosts)) == [200] * len(hosts)
    assert store.count() == 200 * len(hosts)
    assert store.heads() == {h: (200, ev(h, 200).hash) for h in hosts}


# -- reading the record ---------------------------------------------------------------


def test_heads_and_head(store: Store) -> None:
    assert store.heads() == {}
    assert store.head("host-a") is None
    a5 = ev("host-a", 5)
    # Out of order on purpose: the head is the highest seq, not the latest append.
    store.append([A1, a5, B1])
    store.append([A3])
    assert store.heads() == {"host-a": (5, a5.hash), "host-b": (1, B1.hash)}
    assert store.head("host-a") == (5, a5.hash)
    assert store.head("host-b") == (1, B1.hash)
    assert store.head("host-c") is None
    assert all(type(h) is bytes for _, h in store.heads().values())


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        (1, 5, [1, 2, 4, 5]),
        (2, 4, [2, 4]),  # both bounds included
        (3, 3, []),  # a gap
        (6, 9, []),
        (5, 1, []),  # empty range
    ],
)
def test_hashes(store: Store, first: int, last: int, expected: list[int]) -> None:
    rows = [ev("host-a", s) for s in (1, 2, 4, 5)]
    store.append([*rows, ev("host-b", 2)])
    got = store.hashes("host-a", first, last)
    assert got == {r.seq: r.hash for r in rows if r.seq in expected}
    assert all(type(h) is bytes for h in got.values())


def test_chain_is_in_seq_order_and_one_host(store: Store) -> None:
    store.append([A3, B1, A1])
    store.append([A2])
    assert list(store.chain("host-a")) == [A1, A2, A3]
    assert list(store.chain("host-c")) == []
    row = next(store.chain("host-b"))
    assert row == B1
    assert type(row.body) is bytes
    assert type(row.hash) is bytes


def test_chain_streams_while_the_store_is_used(store: Store, store_url: str) -> None:
    n = 2500  # more than one fetch of a server-side cursor
    for k in range(0, n, 500):
        store.append([ev("host-a", s) for s in range(k + 1, k + 501)])
    seen = 0
    for row in store.chain("host-a"):
        seen += 1
        assert row.seq == seen
        if seen % 500 == 0:
            # Other calls between rows must neither fail nor disturb the iteration.
            assert store.head("host-a") == (n, ev("host-a", n).hash)
            store.append([ev("host-b", seen)])
    assert seen == n
    # An iteration dropped half-way releases what it held (PostgreSQL: its connection).
    partial = store.chain("host-a")
    assert next(partial).seq == 1
    del partial
    assert store.count() == n + 5
    if is_postgres(store_url):
        with raw_connection(store_url) as db:
            row = db.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert row == (1,)  # only the test thread's own connection is left


QUERY_ROWS = [
    ev("host-a", 1, kind="file.open", t=T0 + 10),
    ev("host-a", 2, kind="usb.insert", t=T0 + 20),
    ev("host-a", 3, kind="file.open", t=T0 + 30),
    ev("host-b", 1, kind="file.open", t=T0 + 15),
    ev("host-b", 2, kind="net.link", t=T0 + 25),
    ev("host-b", 3, kind="net.link", t=T0 + 25),  # same time: higher seq first
]

QUERY_CASES: list[tuple[str, EventQuery, list[Key]]] = [
    (
        "everything newest first",
        EventQuery(),
        [("host-a", 3), ("host-b", 3), ("host-b", 2), ("host-a", 2), ("host-b", 1), ("host-a", 1)],
    ),
    (
        "no limit",
        EventQuery(limit=None),
        [("host-a", 3), ("host-b", 3), ("host-b", 2), ("host-a", 2), ("host-b", 1), ("host-a", 1)],
    ),
    ("one host", EventQuery(host_id="host-a"), [("host-a", 3), ("host-a", 2), ("host-a", 1)]),
    ("unknown host", EventQuery(host_id="host-z"), []),
    ("one kind", EventQuery(kind="file.open"), [("host-a", 3), ("host-b", 1), ("host-a", 1)]),
    (
        "host and kind",
        EventQuery(host_id="host-b", kind="net.link"),
        [("host-b", 3), ("host-b", 2)],
    ),
    (
        "since includes its bound",
        EventQuery(since_us=T0 + 25),
        [("host-a", 3), ("host-b", 3), ("host-b", 2)],
    ),
    ("until excludes its bound", EventQuery(until_us=T0 + 20), [("host-b", 1), ("host-a", 1)]),
    (
        "time window",
        EventQuery(since_us=T0 + 15, until_us=T0 + 30),
        [("host-b", 3), ("host-b", 2), ("host-a", 2), ("host-b", 1)],
    ),
    ("limit keeps the newest", EventQuery(limit=2), [("host-a", 3), ("host-b", 3)]),
    ("limit with filter", EventQuery(kind="file.open", limit=1), [("host-a", 3)]),
    ("limit zero", EventQuery(limit=0), []),
]


@pytest.mark.parametrize(
    ("q", "expected"), [pytest.param(q, e, id=name) for name, q, e in QUERY_CASES]
)
def test_query(store: Store, q: EventQuery, expected: list[Key]) -> None:
    store.append(QUERY_ROWS)
    got = store.query(q)
    assert keys(got) == expected
    by_key = {(r.host_id, r.seq): r for r in QUERY_ROWS}
    assert got == [by_key[k] for k in expected]  # every column round-trips


def test_count(store: Store) -> None:
    assert store.count() == 0
    store.append(QUERY_ROWS)
    store.append(QUERY_ROWS[:2])
    assert store.count() == len(QUERY_ROWS)


def test_store_reopens_with_its_data(store: Store, store_url: str) -> None:
    store.append([A1, A2, B1])
    store.add_host("host-a", b"\x01" * 32, T0)
    again = open_store(store_url)
    try:
        assert again.count() == 3
        assert again.heads() == store.heads()
        assert again.hosts() == ["host-a", "host-b"]
    finally:
        again.close()


# -- enrolment tokens ---------------------------------------------------------------

TOKEN = hashlib.sha256(b"token").digest()

TOKEN_CASES: list[tuple[str, TokenRow, bytes, int, str | None]] = [
    # (name, stored token, hash presented, now, expected host)
    ("valid", TokenRow(TOKEN, "host-a", T0 + 60 * SECOND, None), TOKEN, T0, "host-a"),
    ("unknown", TokenRow(TOKEN, "host-a", T0 + 60 * SECOND, None), b"\x00" * 32, T0, None),
    ("expired", TokenRow(TOKEN, "host-a", T0 - 1, None), TOKEN, T0, None),
    ("expires this instant", TokenRow(TOKEN, "host-a", T0, None), TOKEN, T0, None),
    ("already used", TokenRow(TOKEN, "host-a", T0 + 60 * SECOND, T0 - SECOND), TOKEN, T0, None),
]


@pytest.mark.parametrize(
    ("token", "presented", "now", "expected"),
    [pytest.param(t, p, n, e, id=name) for name, t, p, n, e in TOKEN_CASES],
)
def test_use_token(
    store: Store, token: TokenRow, presented: bytes, now: int, expected: str | None
) -> None:
    store.add_token(token)
    assert store.use_token(presented, now) == expected


def test_token_works_once(store: Store) -> None:
    store.add_token(TokenRow(TOKEN, "host-a", T0 + 60 * SECOND, None))
    assert store.use_token(TOKEN, T0) == "host-a"
    assert store.use_token(TOKEN, T0 + 1) is None
    assert store.use_token(TOKEN, T0 - 1) is None  # not even with an earlier clock


def test_token_race_has_one_winner(store: Store) -> None:
    store.add_token(TokenRow(TOKEN, "host-a", T0 + 60 * SECOND, None))
    start = threading.Barrier(8)

    def use(_: int) -> str | None:
        start.wait()
        return store.use_token(TOKEN, T0)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(use, range(8)))
    assert results.count("host-a") == 1
    assert results.count(None) == 7


# -- hosts ------------------------------------------------------------------------


def test_hosts_and_certificates(store: Store) -> None:
    assert store.hosts() == []
    cert1, cert2 = b"\x01" * 32, b"\x02" * 32
    store.add_host("host-b", cert1, T0)
    store.add_host("host-b", cert2, T0 + SECOND)  # re-enrolment retires cert1
    assert store.host_certificates("host-b") == [cert2]
    store.add_host("host-b", cert2, T0 + 2 * SECOND)  # the same certificate again
    store.add_host("host-a", cert2, T0)
    store.append([ev("host-c", 1)])  # events but never enrolled here
    assert store.hosts() == ["host-a", "host-b", "host-c"]
    certs = store.host_certificates("host-b")
    assert certs == [cert2]
    assert all(type(c) is bytes for c in certs)
    assert store.host_certificates("host-c") == []


# -- checkpoints --------------------------------------------------------------------


def test_checkpoints_round_trip(store: Store) -> None:
    assert store.checkpoints() == []
    made = [
        (T0, b'{"heads":{}}', b"\x00sig1" * 13),
        (T0 + SECOND, b'{"heads":{"host-a":[1,"00"]}}', b"\xffsig2" * 13),
    ]
    ids = [store.add_checkpoint(*c) for c in made]
    assert ids[0] < ids[1]
    got = store.checkpoints()
    assert [(c.id, c.created_us, c.body, c.signature) for c in got] == [
        (i, *c) for i, c in zip(ids, made, strict=True)
    ]
    assert all(type(c.body) is bytes and type(c.signature) is bytes for c in got)


# -- the database itself refuses changes to events --------------------------------------------

TAMPERING = [
    "UPDATE events SET severity = 9",
    "UPDATE events SET body = body WHERE seq = 1",
    "DELETE FROM events",
    "DELETE FROM events WHERE host_id = 'host-a' AND seq = 2",
]


@pytest.mark.parametrize("statement", TAMPERING)
def test_events_refuse_update_and_delete(store: Store, store_url: str, statement: str) -> None:
    store.append([A1, A2, B1])
    before = list(store.chain("host-a"))
    with raw_connection(store_url) as db, pytest.raises(DB_ERRORS, match="append-only") as e:
        db.execute(statement)
    if isinstance(e.value, psycopg.Error):
        # Raised inside the trigger function, not by a permission or constraint check.
        assert "events_append_only" in (e.value.diag.context or "")
    assert list(store.chain("host-a")) == before
    assert store.count() == 3


@only_postgres
def test_postgres_events_refuse_truncate(store: Store, store_url: str) -> None:
    store.append([A1])
    with raw_connection(store_url) as db, pytest.raises(psycopg.Error, match="append-only"):
        db.execute("TRUNCATE events")
    assert store.count() == 1


# -- opening ------------------------------------------------------------------------


def test_many_openers_at_once(store_url: str) -> None:
    """Collectors starting together on one new database all get the same schema."""
    start = threading.Barrier(6)

    def opener(_: int) -> Store:
        start.wait()
        return open_store(store_url)

    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(opener, range(6)))
    try:
        assert [s.append([A1]) for s in stores] == [1, 0, 0, 0, 0, 0]
    finally:
        for s in stores:
            s.close()


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed on return: nothing listens there


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param(
            lambda: f"postgresql://baomi:hunter2secret@127.0.0.1:{_refused_port()}/baomi",
            "server is running",
            id="no server",
        ),
        pytest.param(
            lambda: "postgresql://baomi:hunter2secret@[::1", "use postgresql://", id="malformed URL"
        ),
    ],
)
def test_postgres_open_errors_say_what_to_fix(url: Callable[[], str], says: str) -> None:
    with pytest.raises(StoreError, match=says) as e:
        PostgresStore(url())
    assert "hunter2secret" not in str(e.value)  # the password never reaches logs


@pytest.mark.postgres
def test_postgres_missing_database(postgres_server: str) -> None:
    url = postgres_server.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(StoreError, match="database exists"):
        open_store(url)


@only_postgres
def test_postgres_reconnects_after_losing_its_connection(store: Store, store_url: str) -> None:
    store.append([A1])
    with raw_connection(store_url) as db:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + 10
        while db.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the terminated backends did not exit"
            time.sleep(0.05)
    # The server hung up on the idle connection (as on a restart): it is replaced before
    # use, so the first call after the outage already succeeds.
    assert store.count() == 1
    assert store.append([A2]) == 1
    assert store.count() == 2


@only_postgres
def test_postgres_call_on_a_connection_lost_mid_use_fails_and_the_next_reconnects(
    store: Store,
) -> None:
    store.append([A1])
    with pytest.raises(psycopg.OperationalError):
        # Terminated from inside the statement: a loss no check before use can see.
        store._db.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # type: ignore[attr-defined]
    assert store.append([A2]) == 1
    assert store.count() == 2


def test_a_kind_is_found_whether_bulk_or_rare(store: Store) -> None:
    """A rare kind's query names the partial index's term; a bulk kind's does not."""
    store.append(
        [
            ev("host-a", 1, kind="file_access"),
            ev("host-a", 2, kind="label_inventory"),
            ev("host-a", 3, kind="file_access"),
            ev("host-b", 1, kind="label_inventory"),
        ]
    )
    assert keys(store.query(EventQuery(kind="file_access"))) == [("host-a", 3), ("host-a", 1)]
    assert keys(store.query(EventQuery(kind="label_inventory"))) == [("host-a", 2), ("host-b", 1)]


def test_received_keys_are_in_the_order_of_arrival_from_their_bound(store: Store) -> None:
    """What the register reads every second: a late event of an offline host (an old
    event time) comes in the order it arrived."""
    late = replace(ev("host-b", 1, kind="label_request"), event_time_us=T0 - 86_400 * SECOND)
    store.append([ev("host-a", 1, kind="label_request", t=T0), ev("host-a", 2, t=T0 + 1)])
    store.append([replace(late, received_us=T0 + 50)])
    store.append([ev("host-a", 3, kind="label_request", t=T0 + 60)])
    assert store.received_keys("label_request", 0) == [
        ("host-a", 1, T0 + 5),
        ("host-b", 1, T0 + 50),
        ("host-a", 3, T0 + 65),
    ]
    assert store.received_keys("label_request", T0 + 50) == [
        ("host-b", 1, T0 + 50),
        ("host-a", 3, T0 + 65),
    ]
    with pytest.raises(ValueError, match="not a rare kind"):
        store.received_keys("file_access", 0)


@pytest.mark.parametrize(
    ("look", "index"),
    [
        (lambda s: s.query(EventQuery(kind="label_inventory")), "events_rare_kind_time"),
        (lambda s: s.received_keys("label_inventory", 0), "events_rare_kind_received"),
    ],
    ids=["by-time", "by-arrival"],
)
def test_a_rare_kind_is_looked_up_by_its_index_not_by_walking_every_event(
    tmp_path: Path, look: Callable[[SQLiteStore], object], index: str
) -> None:
    """The register looks for its kinds every second: over a million events, walking
    the time index for them took the collector most of that second."""
    store = SQLiteStore(tmp_path / "c.db")
    try:
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)  # as run, its values filled in
        look(store)
        store._db.set_trace_callback(None)
        (select,) = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        plan = store._db.execute("EXPLAIN QUERY PLAN " + select).fetchall()
    finally:
        store.close()
    assert index in str(plan), plan
