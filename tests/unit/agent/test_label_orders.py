"""Label orders: applied only when signed by the collector for this host and this content;
a forged or altered order is refused and reported; the inventory lists labelled files."""

from __future__ import annotations

import hashlib
import sqlite3
import tracemalloc
from pathlib import Path

import pytest
from baomi import labels
from baomi.v1 import collector_pb2, events_pb2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent import label_orders
from agent.errors import AgentError
from agent.identity import Identity
from agent.label_orders import LabelOrders, make_request
from collector.register import sign_order

KEY = ed25519.Ed25519PrivateKey.generate()


def _identity() -> Identity:
    pub = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Identity("ws-01", "127.0.0.1:1", b"", b"", b"", pub)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[LabelOrders, list[events_pb2.Event], Path, Path]:
    root = tmp_path / "secret"
    root.mkdir()
    doc = root / "plan.txt"
    doc.write_text("the plan\n")
    try:
        labels.set_label(doc, "秘密")
        labels.clear_label(doc)
    except labels.LabelError:
        pytest.skip(f"{tmp_path} does not support user extended attributes")
    events: list[events_pb2.Event] = []
    key_file = tmp_path / "label.key"
    orders = LabelOrders(tmp_path, _identity(), events.append, roots=[root], label_key=key_file)
    return orders, events, doc, key_file


def _order(
    doc: Path, key: ed25519.Ed25519PrivateKey = KEY, **values: object
) -> collector_pb2.LabelOrder:
    order = collector_pb2.LabelOrder(
        order_id="order-1",
        host_id="ws-01",
        home=str(doc),
        content_hash=hashlib.sha256(doc.read_bytes()).hexdigest(),
        level=events_pb2.LEVEL_SECRET,
        until="2099-12-31",
        scope=["dept:finance"],
        register_id="DM-20261207-abcdef",
        action="classify",
        issued_us=1,
    )
    for name, value in values.items():
        setattr(order, name, value)
    sign_order(key, order)
    return order


def _results(events: list[events_pb2.Event]) -> list[events_pb2.LabelOrderResult]:
    return [e.label_order_result for e in events if e.HasField("label_order_result")]


def test_a_signed_order_is_applied_sealed_with_the_register_id(setup) -> None:  # type: ignore[no-untyped-def]
    orders, events, doc, key_file = setup
    assert orders.offer(_order(doc))
    label = labels.read_label(doc, labels.load_label_key(key_file))
    assert label is not None and label.valid  # sealed with the host key
    assert (label.level, label.label_id, label.home, label.scope) == (
        2, "DM-20261207-abcdef", str(doc), ("dept:finance",),
    )  # fmt: skip
    (result,) = _results(events)
    assert result.ok and result.order_id == "order-1"
    assert result.content_hash == hashlib.sha256(doc.read_bytes()).hexdigest()
    inventory = [e.label_inventory for e in events if e.HasField("label_inventory")][-1]
    assert [(f.home, f.register_id, f.level) for f in inventory.files] == [
        (str(doc), "DM-20261207-abcdef", 2)
    ]
    assert orders.offer(_order(doc))  # sent again: applied once, reported once
    assert len(_results(events)) == 1


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda o: setattr(o, "level", events_pb2.LEVEL_UNCLASSIFIED), id="altered"),
        pytest.param(
            lambda o: sign_order(ed25519.Ed25519PrivateKey.generate(), o), id="another key"
        ),
        pytest.param(lambda o: setattr(o, "signature", b""), id="unsigned"),
    ],
)
def test_a_forged_or_altered_order_is_refused(setup, forge) -> None:  # type: ignore[no-untyped-def]
    orders, events, doc, _ = setup
    order = _order(doc)
    forge(order)
    assert not orders.offer(order)
    assert labels.read_label(doc) is None
    assert _results(events) == []  # never reaches the register as applied or failed
    (tamper,) = [e.tamper for e in events if e.HasField("tamper")]
    assert tamper.kind == "label_order_refused" and "signature" in tamper.detail


def test_an_order_for_another_host_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    orders, events, doc, _ = setup
    assert not orders.offer(_order(doc, host_id="ws-02"))
    assert labels.read_label(doc) is None
    assert "ws-02" in events[-1].tamper.detail


def test_content_changed_since_the_request_fails_the_order(setup) -> None:  # type: ignore[no-untyped-def]
    orders, events, doc, _ = setup
    order = _order(doc)
    doc.write_text("other content\n")
    assert not orders.offer(order)
    (result,) = _results(events)
    assert not result.ok and "content changed" in result.error
    assert labels.read_label(doc) is None


def test_a_symlink_in_the_files_place_fails_the_order(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orders, events, doc, _ = setup
    order = _order(doc)
    other = tmp_path / "elsewhere.txt"
    other.write_text(doc.read_text())
    doc.unlink()
    doc.symlink_to(other)
    assert not orders.offer(order)
    (result,) = _results(events)
    assert "not a regular file" in result.error
    assert labels.read_label(other) is None


def test_a_change_needs_the_label_of_its_register_entry(setup) -> None:  # type: ignore[no-untyped-def]
    orders, events, doc, key_file = setup
    labels.set_label(
        doc, "机密", label_id="DM-other", key=labels.load_label_key(key_file, create=True)
    )
    assert not orders.offer(_order(doc, action="change", order_id="order-2"))
    (result,) = _results(events)
    assert "carries no label of register DM-20261207-abcdef" in result.error


def test_inventory_is_sent_only_when_it_changes(setup) -> None:  # type: ignore[no-untyped-def]
    orders, events, doc, key_file = setup
    orders.report_inventory()
    orders.report_inventory()
    sent = [e.label_inventory for e in events if e.HasField("label_inventory")]
    assert len(sent) == 1 and list(sent[0].files) == []
    labels.set_label(doc, "绝密", key=labels.load_label_key(key_file, create=True))
    orders.report_inventory()
    sent = [e.label_inventory for e in events if e.HasField("label_inventory")]
    assert len(sent) == 2
    (f,) = sent[1].files
    assert (f.home, f.register_id, f.level, f.problem) == (str(doc), "", 3, "")


def test_a_request_says_what_is_missing(tmp_path: Path) -> None:
    doc = tmp_path / "a.txt"
    doc.write_text("a\n")
    common = {"until": None, "scope": None, "register_id": None, "responsible": None, "key": None}
    with pytest.raises(AgentError, match="needs --basis, --title"):
        make_request(str(doc), action="classify", level="机密", basis=None, title=None, **common)
    with pytest.raises(AgentError, match="needs --id"):
        make_request(str(doc), action="change", level="绝密", basis=None, title=None, **common)
    with pytest.raises(AgentError, match="not a level"):
        make_request(str(doc), action="classify", level="ultra", basis="b", title="t", **common)
    with pytest.raises(AgentError, match="not a regular file"):
        make_request(str(tmp_path), action="classify", level="机密", basis="b", title="t", **common)
    req = make_request(str(doc), action="classify", level="机密", basis="b", title="t", **common)
    assert (req.path, req.level) == (str(doc.resolve()), 2)
    assert req.content_hash == hashlib.sha256(b"a\n").hexdigest()


def test_with_the_guard_running_the_trees_are_walked_only_after_a_change(
    setup,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file guard counts the changes its watcher sees in the trees; without one the
    inventory is not walked again (a label set unseen stays unlisted) until the backstop
    period has passed."""
    orders, events, doc, key_file = setup
    changes = [0]
    orders.inventory.changes = lambda: changes[0]

    def sent() -> list[events_pb2.LabelInventory]:
        return [e.label_inventory for e in events if e.HasField("label_inventory")]

    orders.report_inventory()
    labels.set_label(doc, "绝密", key=labels.load_label_key(key_file, create=True))
    orders.report_inventory()
    assert len(sent()) == 1  # no change counted: not walked
    changes[0] += 1  # the watcher saw the attribute change
    orders.report_inventory()
    assert len(sent()) == 2 and [f.level for f in sent()[1].files] == [3]
    labels.set_label(doc, "机密", key=labels.load_label_key(key_file))
    monkeypatch.setattr(label_orders, "RESCAN_SECONDS", 0.0)  # the backstop walks anyway
    orders.report_inventory()
    assert len(sent()) == 3 and [f.level for f in sent()[2].files] == [2]


def _labelled(doc: Path, key_file: Path, files: int) -> list[Path]:
    key = labels.load_label_key(key_file, create=True)
    made = []
    for i in range(files):
        f = doc.parent / f"f{i:04d}"
        f.write_text(f"document {i}\n")
        labels.set_label(f, "秘密", key=key)
        made.append(f)
    return made


def test_the_inventory_keeps_nothing_per_labelled_file_in_memory(setup) -> None:  # type: ignore[no-untyped-def]
    """Its content hashes are in the state directory, not in the agent's memory: a
    server guards hundreds of thousands of labelled files."""
    orders, _events, doc, key_file = setup
    files = 600
    _labelled(doc, key_file, files)
    orders.inventory.scan()  # a first pass: what the module caches once (regexes, labels)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        listed = orders.inventory.scan()
        del listed
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 16 * 1024, f"{kept} bytes kept after a pass over {files} files"
    (f0,) = [f for f in orders.inventory.scan().files if f.home.endswith("/f0000")]
    assert f0.content_hash == hashlib.sha256(b"document 0\n").hexdigest()


def test_a_restarted_agent_reads_only_the_files_changed_meanwhile(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    orders, events, doc, key_file = setup
    made = _labelled(doc, key_file, 20)
    first = orders.inventory.scan()
    read: list[str] = []
    digest = label_orders.content_digest
    monkeypatch.setattr(
        label_orders, "content_digest", lambda path: read.append(str(path)) or digest(path)
    )
    again = LabelOrders(
        tmp_path, _identity(), events.append, roots=[doc.parent], label_key=key_file
    )
    assert again.inventory.scan() == first
    assert read == []
    made[3].write_text("rewritten\n")  # its label stays (an attribute), its content changes
    after = again.inventory.scan()
    assert read == [str(made[3])]
    (f3,) = [f for f in after.files if f.home == str(made[3])]
    assert f3.content_hash == hashlib.sha256(b"rewritten\n").hexdigest()


def test_a_damaged_hash_cache_is_started_afresh(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orders, _events, doc, key_file = setup
    _labelled(doc, key_file, 3)
    (tmp_path / label_orders.HASHES_FILE).write_bytes(b"not a database " * 300)
    listed = orders.inventory.scan()
    assert len(listed.files) == 3
    assert all(f.content_hash for f in listed.files)


def test_files_gone_from_the_trees_leave_the_hash_cache(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orders, _events, doc, key_file = setup
    made = _labelled(doc, key_file, 10)
    orders.inventory.scan()
    for f in made[:4]:
        f.unlink()
    orders.inventory.scan()
    cache = label_orders.ContentHashes(tmp_path / label_orders.HASHES_FILE)
    try:
        assert len(cache) == 6
    finally:
        cache.close()


def test_a_hash_cache_damaged_in_use_is_started_afresh_at_the_next_pass(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Damage the database reports in the middle of a pass fails that pass only (the
    inventory loop tries again); the next pass starts the cache afresh."""
    orders, _events, doc, key_file = setup
    _labelled(doc, key_file, 3)
    orders.inventory.scan()
    cache = tmp_path / label_orders.HASHES_FILE
    assert cache.exists()

    def malformed(self: label_orders.ContentHashes, version: bytes, path: str) -> bytes:
        raise sqlite3.DatabaseError("database disk image is malformed")

    with monkeypatch.context() as m:
        m.setattr(label_orders.ContentHashes, "digest", malformed)
        with pytest.raises(sqlite3.DatabaseError):
            orders.inventory.scan()
    assert not cache.exists()
    listed = orders.inventory.scan()
    assert len(listed.files) == 3
    assert all(f.content_hash for f in listed.files)
    assert cache.exists()  # made anew


def test_an_inventory_past_its_limit_says_so_and_keeps_the_hashes_it_did_not_reach(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The first MAX_INVENTORY_FILES files of the walk (names sorted, directories too),
    marked truncated; a truncated pass forgets no content hash, since it did not look."""
    orders, _events, doc, key_file = setup
    made = _labelled(doc, key_file, 5)
    sub = doc.parent / "a-dir"  # walked after the files of its parent
    sub.mkdir()
    (sub / "inner").write_text("inner\n")
    labels.set_label(sub / "inner", "秘密", key=labels.load_label_key(key_file))
    whole = orders.inventory.scan()
    assert not whole.truncated
    assert [f.home for f in whole.files] == [*map(str, made), str(sub / "inner")]
    monkeypatch.setattr(label_orders, "MAX_INVENTORY_FILES", 3)
    cut = orders.inventory.scan()
    assert cut.truncated
    assert [f.home for f in cut.files] == [str(p) for p in made[:3]]
    monkeypatch.setattr(label_orders, "MAX_INVENTORY_FILES", 1000)
    read: list[str] = []
    digest = label_orders.content_digest
    monkeypatch.setattr(
        label_orders, "content_digest", lambda path: read.append(str(path)) or digest(path)
    )
    assert orders.inventory.scan() == whole
    assert read == []  # every hash, also of the files the cut pass did not reach, kept
