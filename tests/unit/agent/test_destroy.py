"""Destruction on the host: the order kept on arrival, checked again on use (signature,
host, register id, home, person), the policy's ``delete`` for the person, the file
overwritten and removed, and every outcome recorded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from baomi import labels
from baomi.v1 import collector_pb2, events_pb2
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.destroy import (
    ORDERS_DIR,
    Destroyer,
    DestroyError,
    keep_order,
    load_policies,
    order_person,
    overwrite_and_remove,
)
from agent.label_orders import LabelOrders
from agent.signing import SigningKey
from collector.register import sign_order
from tests.unit.agent.test_label_orders import KEY, _identity

REPO = Path(__file__).resolve().parents[3]
RID = "DM-20261207-abcdef"
SUBJECTS = """
[people.alice]
uid = 2001
department = "finance"
roles = ["staff"]
clearance = "核心"
trained_until = 2099-12-31
status = "active"

[people.bob]
uid = 2002
department = "finance"
roles = ["staff"]
clearance = "核心"
trained_until = 2099-12-31
status = "active"
"""


class Site:
    """A labelled file, a policy letting alice (not bob) delete it, and a destroyer."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.state.mkdir()
        root = tmp_path / "secret"
        root.mkdir()
        self.doc = root / "plan.txt"
        self.doc.write_bytes(b"the plan\n" * 5000)
        self.key = labels.load_label_key(tmp_path / "label.key", create=True)
        try:
            labels.set_label(self.doc, "机密", label_id=RID, key=self.key, home=str(self.doc))
        except labels.LabelError:
            pytest.skip(f"{tmp_path} does not support user extended attributes")
        self.policies = tmp_path / "policies"
        self.policies.mkdir()
        shutil.copy(REPO / "policies" / "model.conf", self.policies / "model.conf")
        (self.policies / "policy.csv").write_text(
            f"p, role:staff, {root}/**, read, allow\np, alice, {root}/**, delete, allow\n"
        )
        (self.policies / "subjects.toml").write_text(SUBJECTS)
        self.events: list[events_pb2.Event] = []
        self.destroyer = Destroyer(
            self.state,
            host_id="ws-01",
            verify_key=SigningKey(_identity().signing_pub_pem),
            label_key=lambda: self.key,
            policies=load_policies(self.policies),
            emit=self.events.append,
        )

    def order(
        self, key: ed25519.Ed25519PrivateKey = KEY, *, offer: bool = False, **values: object
    ) -> str:
        """A destruction order in the state directory (``offer``: as the agent receives
        it from the collector, verified on arrival); its id."""
        order = collector_pb2.LabelOrder(
            order_id="order-d1", host_id="ws-01", home=str(self.doc), level=2,
            scope=["user:alice"], register_id=RID, action="destroy", issued_us=1,
        )  # fmt: skip
        for name, value in values.items():
            if isinstance(value, list):
                getattr(order, name)[:] = value
            else:
                setattr(order, name, value)
        sign_order(key, order)
        if offer:
            orders = LabelOrders(
                self.state, _identity(), self.events.append, roots=[], label_key=Path("/none")
            )
            orders.offer(order)
        else:
            keep_order(self.state, order)
        return order.order_id

    def changes(self, change: str) -> list[events_pb2.FileChange]:
        return [
            e.file_change
            for e in self.events
            if e.HasField("file_change") and e.file_change.change == change
        ]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_the_named_allowed_person_destroys_the_file_and_it_is_recorded(site: Site) -> None:
    order_id = site.order(offer=True)
    assert site.doc.is_file() and site.events == []  # kept: nothing happens on arrival
    digest = hashlib.sha256(site.doc.read_bytes()).hexdigest()
    done = site.destroyer.destroy(str(site.doc), order_id, "alice")
    assert not site.doc.exists()
    assert (done.register_id, done.content_hash, done.level) == (RID, digest, 2)
    (change,) = site.changes("destroyed")
    assert (change.label_id, change.home) == (RID, str(site.doc))
    assert json.loads(change.detail) == {"sha256": digest, "order": order_id, "by": "alice"}
    (result,) = [e.label_order_result for e in site.events if e.HasField("label_order_result")]
    assert (result.order_id, result.register_id, result.ok) == (order_id, RID, True)
    # Used up: gone from the state directory, and the collector resending it keeps nothing.
    assert not (site.state / ORDERS_DIR / f"{order_id}.pb").exists()
    site.order(offer=True)
    assert not (site.state / ORDERS_DIR / f"{order_id}.pb").exists()
    site.doc.write_text("a new file at the same place\n")
    with pytest.raises(DestroyError, match="no destruction order"):
        site.destroyer.destroy(str(site.doc), order_id, "alice")


@pytest.mark.parametrize(
    ("order", "person", "message"),
    [
        ({}, "bob", "names 'alice' to destroy it, not 'bob'"),
        ({"scope": ["user:bob"]}, "bob", "does not allow bob to delete"),
        ({"register_id": "DM-other"}, "alice", "no valid label of register DM-other"),
        ({"home": "/elsewhere/plan.txt"}, "alice", "the order's is /elsewhere/plan.txt"),
        ({"host_id": "ws-02"}, "alice", "is for host 'ws-02'"),
        ({"scope": ["user:alice", "user:bob"]}, "alice", "not a destruction order naming"),
    ],
)
def test_a_destruction_not_ordered_for_this_file_and_person_is_refused(
    site: Site, order: dict[str, object], person: str, message: str
) -> None:
    order_id = site.order(**order)
    with pytest.raises(DestroyError, match=message):
        site.destroyer.destroy(str(site.doc), order_id, person)
    assert site.doc.read_bytes() == b"the plan\n" * 5000
    (refused,) = site.changes("destroy_refused")
    assert message.split("'", maxsplit=1)[0] in refused.detail and refused.path == str(site.doc)
    assert not site.changes("destroyed")


def test_a_forged_or_altered_order_is_refused(site: Site) -> None:
    forged = site.order(ed25519.Ed25519PrivateKey.generate(), offer=True, order_id="order-f")
    assert not (site.state / ORDERS_DIR / f"{forged}.pb").exists()  # refused on arrival
    (tamper,) = [e.tamper for e in site.events if e.HasField("tamper")]
    assert tamper.kind == "label_order_refused"
    order_id = site.order()
    kept = site.state / ORDERS_DIR / f"{order_id}.pb"
    order = collector_pb2.LabelOrder.FromString(kept.read_bytes())
    order.scope[:] = ["user:bob"]
    kept.write_bytes(order.SerializeToString())
    with pytest.raises(DestroyError, match="signature does not verify"):
        site.destroyer.destroy(str(site.doc), order_id, "bob")
    with pytest.raises(DestroyError, match="no destruction order 'order-nope'"):
        site.destroyer.destroy(str(site.doc), "order-nope", "alice")
    with pytest.raises(DestroyError, match="is not an order id"):
        site.destroyer.destroy(str(site.doc), "../../etc/passwd", "alice")
    with pytest.raises(DestroyError, match="signature does not verify"):  # put there by hand
        site.destroyer.destroy(
            str(site.doc), site.order(ed25519.Ed25519PrivateKey.generate()), "alice"
        )
    assert site.doc.is_file() and len(site.changes("destroy_refused")) == 4


def test_without_a_policy_nobody_may_destroy(site: Site) -> None:
    order_id = site.order()
    shutil.rmtree(site.policies)
    with pytest.raises(DestroyError, match="no file policy is in force"):
        site.destroyer.destroy(str(site.doc), order_id, "alice")


def test_the_overwrite_replaces_every_byte_then_truncates_and_unlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc, seen = tmp_path / "doc", tmp_path / "seen"
    doc.write_bytes(b"A" * 3_000_000)
    seen.hardlink_to(doc)  # a second name to look at what the overwrite left
    with monkeypatch.context() as m:
        m.setattr(os, "ftruncate", lambda fd, length: None)  # keep the overwritten bytes
        overwrite_and_remove(doc)
    data = seen.read_bytes()
    assert not doc.exists() and len(data) == 3_000_000
    assert data.count(b"A") < 3_000_000 // 100  # random bytes: about 1/256 of them are "A"
    doc.hardlink_to(seen)
    overwrite_and_remove(doc)
    assert seen.stat().st_size == 0  # truncated after the overwrite


def test_order_person_is_the_one_user_of_the_scope() -> None:
    assert order_person(collector_pb2.LabelOrder(scope=["user:alice"])) == "alice"
    assert order_person(collector_pb2.LabelOrder(scope=["dept:finance"])) == ""
    assert order_person(collector_pb2.LabelOrder(scope=["user:a", "user:b"])) == ""
