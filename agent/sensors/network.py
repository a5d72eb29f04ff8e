"""Sensor ``network``: links, addresses and default routes, and the 违规外联 rules on them.

A secret computer must never reach the internet or a wireless network. The kernel tells
every change of links, addresses and routes over rtnetlink; this sensor subscribes to
those groups (``RTNLGRP_LINK``, IPv4/IPv6 ``IFADDR`` and ``ROUTE``) with pyroute2 and
turns each change into a ``network`` event:

``link_new`` / ``link_del``
    An interface appeared or went away, with its kind (``classify_link``).
``link_up`` / ``link_down``
    Its administrative state (``IFF_UP``) changed.
``address_add`` / ``address_del``
    An IPv4 or IPv6 address was added to or removed from an interface.
``default_route_add`` / ``default_route_del``
    A unicast default route (``0.0.0.0/0`` or ``::/0``, any table) appeared or went away.

Policy (``NetworkConfig``): no wireless link may be up, no USB-backed network link may
exist, and a default route may only go through a configured gateway. A violation is a
``SEVERITY_HIGH`` event with ``violation`` set and a reason. With ``enforce`` the sensor
also acts: it brings the offending link down, or deletes the offending default route, and
says so in the event (``enforced``) and in a warning log line.

The netlink socket is read by an asyncio loop in a thread of its own. At start, and again
after any socket error (above all ``ENOBUFS``: the kernel dropped messages because the
receive buffer was full), the sensor re-reads every link, address and route and reports
what differs from what it knew, so nothing missed during an outage stays unreported
(a change that came and went entirely within the outage cannot be seen; a ``tamper``
event of kind ``netlink_resync`` says that there was one). Reconnection backs off
exponentially. Requests (dumps, enforcement) go over a second, unsubscribed socket: the
kernel tags the notification of a change with the sequence number of the request that
made it, and pyroute2 would hand such a message to that request instead of to the
listener.

``netns`` makes the sensor watch another network namespace (tests, benchmarks). The
sysfs tree used to classify links is a parameter too: ``/sys`` shows the interfaces of
the namespace that mounted it, so a sensor watching another namespace needs that
namespace's sysfs (or, in tests, a fake tree).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baomi.v1 import events_pb2

from agent.errors import ConfigError
from agent.sensors.base import EventSink, Health

_logger = logging.getLogger(__name__)

# <linux/rtnetlink.h> multicast groups (bit masks for bind) and message types.
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
GROUPS |= RTMGRP_IPV6_ROUTE
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLM_F_REPLACE = 0x100
RTN_UNICAST = 1
RTM_F_CLONED = 0x200  # an IPv6 route cache entry, not a configured route
AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7
IFF_UP, IFF_LOOPBACK = 0x1, 0x8
# <linux/if_arp.h> hardware types that say "wireless" without sysfs.
ARPHRD_ETHER, ARPHRD_PPP, ARPHRD_LOOPBACK = 1, 512, 772
ARPHRD_WIRELESS = frozenset({801, 802, 803})  # IEEE802.11, +prism, +radiotap (monitor mode)
IFLA_TUN_TYPE_TAP = 2  # IFF_TAP in IFLA_TUN_TYPE

RCVBUF = 1 << 20  # bytes of kernel receive buffer for the subscription
BACKOFF_MIN = 0.1  # seconds before the first reconnect after a socket error
BACKOFF_MAX = 30.0  # seconds, ceiling of the doubling reconnect delay
STOP_TIMEOUT = 5.0  # seconds stop() waits for the reader thread
REASON_CHARS = 500  # of a reason kept in an event


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """What the network sensor allows and where it looks."""

    gateways: tuple[str, ...] = ()  # IP addresses a default route may use; empty: none may
    enforce: bool = False  # bring offending links down and delete offending default routes
    netns: str | None = None  # a namespace name under /run/netns, or a path; None: our own
    sysfs: Path = Path("/sys")  # root of the sysfs tree read to classify links
    rcvbuf: int = RCVBUF  # bytes; when it overflows the kernel drops messages: re-dump
    backoff_min: float = BACKOFF_MIN  # seconds before the first reconnect
    backoff_max: float = BACKOFF_MAX  # seconds, ceiling of the reconnect delay


# -- classification --------------------------------------------------------------------
def _usb_backed(net: Path) -> bool:
    """Whether ``net`` (``<sysfs>/class/net/IF``) has a device on a USB bus."""
    device = net / "device"
    if not device.exists():
        return False  # a virtual link has no device
    real = device.resolve()
    # Only the part under the sysfs root counts: the root itself may be anywhere.
    with contextlib.suppress(ValueError):
        real = real.relative_to(net.parents[2].resolve())
    return "/usb" in f"/{real.as_posix()}"


def _ifindex(net: Path) -> int | None:
    try:
        return int((net / "ifindex").read_text())
    except (OSError, ValueError):
        return None


def _sysfs_dir(sysfs: Path, name: str, index: int | None) -> Path:
    """``<sysfs>/class/net/<name>``, or the entry with ifindex ``index`` when the name
    is stale: udev may rename a link (eth0 -> enx...) before its first message is read."""
    net = sysfs / "class" / "net" / name
    if index is None or (_ifindex(net) in (index, None) and net.exists()):
        return net
    with contextlib.suppress(OSError):
        for candidate in net.parent.iterdir():
            if _ifindex(candidate) == index:
                return candidate
    return net


def classify_link(
    sysfs: Path,
    name: str,
    *,
    ifi_type: int,
    flags: int,
    info_kind: str | None = None,
    tun_type: int | None = None,
    index: int | None = None,
) -> tuple[str, bool]:
    """The kind of link ``name`` and whether its device is on a USB bus.

    Kinds, first match: ``wireless`` (sysfs ``wireless`` or ``phy80211``, or an 802.11
    hardware type), ``loopback``, ``usb`` (a USB device that is not wireless: tethered
    phones, USB Ethernet), ``tun``/``tap``, the rtnetlink kind of other virtual links
    (``veth``, ``bridge``, ``vlan``, ``wireguard`` ...), ``ethernet``, ``ppp``, else
    ``arphrd-<type>``. The USB flag is returned apart: a USB Wi-Fi dongle is both.
    """
    net = _sysfs_dir(sysfs, name, index)
    usb = _usb_backed(net)
    if (net / "wireless").exists() or (net / "phy80211").exists() or ifi_type in ARPHRD_WIRELESS:
        kind = "wireless"
    elif flags & IFF_LOOPBACK or ifi_type == ARPHRD_LOOPBACK:
        kind = "loopback"
    elif usb:  # virtual links have no device, so a USB one is never also a veth or tun
        kind = "usb"
    elif info_kind == "tun":
        kind = "tap" if tun_type == IFLA_TUN_TYPE_TAP else "tun"
    elif info_kind:
        kind = info_kind
    elif ifi_type == ARPHRD_ETHER:
        kind = "ethernet"
    elif ifi_type == ARPHRD_PPP:
        kind = "ppp"
    else:
        kind = f"arphrd-{ifi_type}"
    return kind, usb


# -- state -----------------------------------------------------------------------------
@dataclass
class _Link:
    index: int
    name: str
    kind: str
    usb: bool
    up: bool


@dataclass(frozen=True)
class _Route:
    """A default route as the kernel identifies it (table, metric, next hops)."""

    family: int
    table: int
    priority: int
    tos: int
    hops: tuple[tuple[str, int], ...]  # (gateway or "", oif), sorted

    @property
    def slot(self) -> tuple[int, int, int, int]:
        """What a route replacing this one has in common with it."""
        return (self.family, self.table, self.priority, self.tos)


_AddrKey = tuple[int, int, str, int]  # (index, family, address, prefixlen)


def _link_of(msg: Any, sysfs: Path, known: _Link | None) -> _Link:
    """The link in ``msg``; its kind is ``known``'s when the index is (the device of a
    link does not change with its name or state), else read from sysfs."""
    index = int(msg["index"])
    name = str(msg.get("ifname") or f"if{index}")
    up = bool(msg["flags"] & IFF_UP)
    if known is not None:
        return _Link(index, name, known.kind, known.usb, up)
    tun_type = msg.get(("linkinfo", "data", "tun_type"))
    kind, usb = classify_link(
        sysfs,
        name,
        ifi_type=int(msg["ifi_type"]),
        flags=int(msg["flags"]),
        info_kind=msg.get(("linkinfo", "kind")),
        tun_type=int(tun_type) if tun_type is not None else None,
        index=index,
    )
    return _Link(index, name, kind, usb, up)


def _addr_of(msg: Any) -> _AddrKey:
    # IFA_LOCAL is our own address; IFA_ADDRESS is the peer's on point-to-point links.
    address = msg.get("local") or msg.get("address") or ""
    return (int(msg["index"]), int(msg["family"]), str(address), int(msg["prefixlen"]))


def _route_of(msg: Any) -> _Route | None:
    """The default route in ``msg``, or None when it is not one this sensor tracks."""
    if msg["dst_len"] != 0 or msg["type"] != RTN_UNICAST or msg["flags"] & RTM_F_CLONED:
        return None
    hops: list[tuple[str, int]] = []
    multipath = msg.get("multipath")
    if multipath:
        hops.extend((str(nh.get("gateway") or ""), int(nh["oif"])) for nh in multipath)
    else:
        gateway = msg.get("gateway")
        if gateway is None:
            via = msg.get("via")  # an IPv4 route through an IPv6 next hop (RFC 5549)
            gateway = via.get("addr") if isinstance(via, dict) else None
        hops.append((str(gateway or ""), int(msg.get("oif") or 0)))
    return _Route(
        family=int(msg["family"]),
        table=int(msg.get("table") or msg["table"]),
        priority=int(msg.get("priority") or 0),
        tos=int(msg["tos"]),
        hops=tuple(sorted(hops)),
    )


# -- the sensor ------------------------------------------------------------------------
class NetworkSensor:
    """Sensor ``network``: report link, address and default-route changes; flag 违规外联."""

    name = "network"

    def __init__(self, config: NetworkConfig, sink: EventSink) -> None:
        try:
            allowed = {ipaddress.ip_address(g) for g in config.gateways}
        except ValueError as e:
            raise ConfigError(
                f"network sensor: {e}; list gateways as plain IPv4 or IPv6 addresses"
            ) from e
        if config.rcvbuf < 4096 or config.backoff_min <= 0 or config.backoff_max <= 0:
            raise ConfigError("network sensor: rcvbuf must be >= 4096 bytes, backoffs > 0 s")
        self._config = config
        self._sink = sink
        self._allowed = allowed
        self._links: dict[int, _Link] = {}
        self._addrs: set[_AddrKey] = set()
        self._routes: set[_Route] = set()
        self._lock = threading.Lock()  # guards the fields below, read by other threads
        self._health = Health("disabled", "not started")
        self._enforce_error = ""
        self._synced = threading.Event()
        self._resyncs = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._requests: Any = None  # the unsubscribed AsyncIPRoute, while connected
        if config.enforce:
            _logger.warning(
                "network sensor enforcing: offending links are brought down and "
                "offending default routes deleted"
            )

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread; it connects, dumps, then follows changes."""
        if self._thread is not None:
            return
        self._synced.clear()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name="network-netlink", daemon=True
        )
        self._thread.start()
        started.wait()

    def stop(self) -> None:
        """Stop the reader thread; it closes both netlink sockets on its way out."""
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None:
            return
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(task.cancel)
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            _logger.error("network sensor: reader thread did not stop in %.0f s", STOP_TIMEOUT)
        self._thread = None
        self._set_health("disabled", "stopped")

    def health(self) -> Health:
        """ok when following changes; degraded while reconnecting or when enforcing fails."""
        with self._lock:
            health, enforce_error = self._health, self._enforce_error
        if health.state == "ok" and enforce_error:
            return Health("degraded", enforce_error)
        return health

    def wait_synced(self, timeout: float) -> bool:
        """Wait until the first full dump has been reported; False on timeout."""
        return self._synced.wait(timeout)

    @property
    def resyncs(self) -> int:
        """How many times the sensor re-read everything after a socket error."""
        with self._lock:
            return self._resyncs

    def _set_health(self, state: str, detail: str = "") -> None:
        with self._lock:
            self._health = Health(state, detail)

    # -- the reader thread -------------------------------------------------------------
    def _thread_main(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._run())
            started.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
        finally:
            started.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _run(self) -> None:
        from pyroute2 import AsyncIPRoute  # noqa: PLC0415 - only the reader thread needs it

        config = self._config
        where = f"namespace {config.netns}" if config.netns else "this namespace"
        delay = config.backoff_min
        after_error = ""  # why the last subscription ended, once one had synced
        while True:
            listener: Any = None
            requests: Any = None
            stage = f"opening rtnetlink in {where}"
            try:
                # flags=0: a missing namespace is an error, never silently created.
                listener = AsyncIPRoute(netns=config.netns, flags=0, rcvbuf=config.rcvbuf)
                await listener.bind(groups=GROUPS)
                requests = AsyncIPRoute(netns=config.netns, flags=0)
                self._requests = requests
                stage = "reading links, addresses and routes"
                # Subscribed first, dumped second: a change made during the dump is in
                # the dump, in the queue after it, or both, and the diff absorbs repeats.
                await self._resync(requests, after_error)
                after_error = ""
                delay = config.backoff_min
                self._set_health("ok")
                self._synced.set()
                stage = "following rtnetlink"
                await self._follow(listener)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure: reconnect and re-dump
                error = f"{stage} failed: {_describe(e)}"
                if self._synced.is_set():
                    after_error = error
                _logger.warning("network sensor: %s; retrying in %.1f s", error, delay)
                self._set_health("degraded", f"{error}; retrying in {delay:.1f} s")
            finally:
                self._requests = None
                for sock in (listener, requests):
                    if sock is not None:
                        with contextlib.suppress(Exception):
                            sock.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, config.backoff_max)

    async def _follow(self, listener: Any) -> None:
        """Handle notifications until the socket fails."""
        while True:
            messages = [m async for m in listener.get()]
            if not messages:  # pyroute2 ends a read with nothing when the socket closes
                raise ConnectionError("the netlink socket was closed")
            for msg in messages:
                await self._handle(msg)

    async def _resync(self, requests: Any, after_error: str) -> None:
        """Dump everything and report what differs from what was known."""
        links = {}
        async for msg in await requests.link("dump"):
            if msg["family"] != AF_BRIDGE:
                link = _link_of(msg, self._config.sysfs, self._links.get(msg["index"]))
                links[link.index] = link
        addrs = {_addr_of(msg) async for msg in await requests.addr("dump")}
        routes = await self._dump_routes(requests)
        if after_error:
            with self._lock:
                self._resyncs += 1
            self._emit_event(
                events_pb2.Event(
                    severity=events_pb2.SEVERITY_MEDIUM,
                    tamper=events_pb2.Tamper(
                        kind="netlink_resync",
                        detail=(
                            f"{after_error}; links, addresses and routes re-read: a change"
                            " made and undone in between cannot be seen"
                        )[:REASON_CHARS],
                    ),
                )
            )
        # Removals first, innermost first; then additions, outermost first.
        for route in self._routes - routes:
            self._route_gone(route)
        for key in self._addrs - addrs:
            self._addr_gone(key)
        for index in set(self._links) - set(links):
            self._link_gone(index)
        for link in links.values():
            await self._link_seen(link)
        for key in sorted(addrs - self._addrs):
            self._addr_seen(key)
        for route in routes - self._routes:
            await self._route_seen(route, replace=False)

    async def _dump_routes(self, requests: Any) -> set[_Route]:
        routes = set()
        async for msg in await requests.route("dump"):
            route = _route_of(msg)
            if route is not None:
                routes.add(route)
        return routes

    async def _resync_routes(self, index: int) -> None:
        """Re-read default routes when a change may have removed some through ``index``.

        IPv4 flushes the routes of a link that goes down, or loses the address their
        gateway was reached by, without telling anyone; a re-added route would then look
        known and go unreported.
        """
        if not any(oif == index for route in self._routes for _, oif in route.hops):
            return
        requests = self._requests
        if requests is None:
            return
        routes = await self._dump_routes(requests)
        for route in self._routes - routes:
            self._route_gone(route)
        for route in routes - self._routes:
            await self._route_seen(route, replace=False)

    async def _handle(self, msg: Any) -> None:
        kind = msg["header"]["type"]
        if kind == RTM_NEWLINK and msg["family"] != AF_BRIDGE:
            known = self._links.get(msg["index"])
            await self._link_seen(_link_of(msg, self._config.sysfs, known))
        elif kind == RTM_DELLINK and msg["family"] != AF_BRIDGE:
            index = int(msg["index"])
            self._link_gone(index)
            await self._resync_routes(index)
        elif kind == RTM_NEWADDR:
            self._addr_seen(_addr_of(msg))
        elif kind == RTM_DELADDR:
            key = _addr_of(msg)
            self._addr_gone(key)
            await self._resync_routes(key[0])
        elif kind in (RTM_NEWROUTE, RTM_DELROUTE):
            route = _route_of(msg)
            if route is None:
                return
            if kind == RTM_NEWROUTE:
                replace = bool(msg["header"]["flags"] & NLM_F_REPLACE)
                await self._route_seen(route, replace=replace)
            else:
                self._route_gone(route)

    # -- links -------------------------------------------------------------------------
    async def _link_seen(self, link: _Link) -> None:
        old = self._links.get(link.index)
        self._links[link.index] = link
        if old is None:
            # A new link that is already up is enforced by its link_up event, below.
            violation = f"USB network link {link.name} ({link.kind})" if link.usb else ""
            self._emit("link_new", link, violation=violation)
        elif old.up == link.up:
            return
        if link.up:
            violation = ""
            if link.kind == "wireless":
                violation = f"wireless link {link.name} is up"
            elif link.usb:
                violation = f"USB network link {link.name} ({link.kind}) is up"
            enforced, note = False, ""
            if violation:
                enforced, note = await self._bring_down(link, violation)
            self._emit("link_up", link, violation=violation, note=note, enforced=enforced)
        elif old is not None:
            self._emit("link_down", link)
            await self._resync_routes(link.index)

    def _link_gone(self, index: int) -> None:
        if index not in self._links:
            return
        # Its addresses go with it, reported while its name is still known; the kernel's
        # own RTM_DELADDR for them, if it comes later, then finds nothing to report.
        for key in sorted(k for k in self._addrs if k[0] == index):
            self._addr_gone(key)
        self._emit("link_del", self._links.pop(index))

    async def _bring_down(self, link: _Link, why: str) -> tuple[bool, str]:
        """Enforce: set ``link`` down. Returns (done, what to add to the reason)."""
        if not self._config.enforce:
            return False, ""
        requests = self._requests
        try:
            await requests.link("set", index=link.index, state="down")
        except Exception as e:  # noqa: BLE001 - reported in the event and in health
            return False, self._enforce_failed(f"could not bring {link.name} down", e, why)
        _logger.warning("network sensor: brought %s down (%s)", link.name, why)
        self._enforced_ok()
        return True, "brought down"

    def _enforced_ok(self) -> None:
        with self._lock:
            self._enforce_error = ""

    def _enforce_failed(self, what: str, error: BaseException, why: str) -> str:
        text = f"{what}: {_describe(error)}"
        _logger.warning("network sensor: %s (%s)", text, why)
        with self._lock:
            self._enforce_error = f"enforcing failed: {text}"
        return text

    # -- addresses ---------------------------------------------------------------------
    def _addr_seen(self, key: _AddrKey) -> None:
        if key in self._addrs:
            return  # lifetimes, flags and DAD state changes repeat RTM_NEWADDR
        self._addrs.add(key)
        self._emit_addr("address_add", key)

    def _addr_gone(self, key: _AddrKey) -> None:
        if key in self._addrs:
            self._addrs.discard(key)
            self._emit_addr("address_del", key)

    def _emit_addr(self, action: str, key: _AddrKey) -> None:
        index, _, address, prefixlen = key
        link = self._links.get(index)
        self._emit_event(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_INFO,
                network=events_pb2.Network(
                    action=action,
                    interface=link.name if link else f"if{index}",
                    link_kind=link.kind if link else "",
                    address=f"{address}/{prefixlen}",
                ),
            )
        )

    # -- default routes ----------------------------------------------------------------
    async def _route_seen(self, route: _Route, *, replace: bool) -> None:
        if route in self._routes:
            return
        if replace:
            for old in [r for r in self._routes if r.slot == route.slot]:
                self._route_gone(old)
        self._routes.add(route)
        violation = self._route_violation(route)
        enforced, note = False, ""
        if violation:
            enforced, note = await self._delete_route(route, violation)
        self._emit_route(
            "default_route_add", route, violation=violation, note=note, enforced=enforced
        )

    def _route_gone(self, route: _Route) -> None:
        if route in self._routes:
            self._routes.discard(route)
            self._emit_route("default_route_del", route)

    def _route_violation(self, route: _Route) -> str:
        bad = []
        for gateway, oif in route.hops:
            if not gateway:
                bad.append(f"straight out of {self._ifname(oif)} without a gateway")
            elif not self._is_allowed(gateway):
                bad.append(f"via {gateway}, not a configured gateway")
        if not bad:
            return ""
        return f"default route (table {route.table}) " + "; ".join(bad)

    def _is_allowed(self, gateway: str) -> bool:
        try:
            return ipaddress.ip_address(gateway) in self._allowed
        except ValueError:  # not an address we can compare: not a configured one
            return False

    async def _delete_route(self, route: _Route, why: str) -> tuple[bool, str]:
        if not self._config.enforce:
            return False, ""
        requests = self._requests
        spec: dict[str, Any] = {
            "family": route.family,
            "dst_len": 0,
            "table": route.table,
            "tos": route.tos,
        }
        if route.priority:
            spec["priority"] = route.priority
        if len(route.hops) == 1:
            gateway, oif = route.hops[0]
            if gateway:
                spec["gateway"] = gateway
            if oif:
                spec["oif"] = oif
        try:
            await requests.route("del", **spec)
        except Exception as e:  # noqa: BLE001 - reported in the event and in health
            return False, self._enforce_failed("could not delete the route", e, why)
        _logger.warning("network sensor: deleted %s", why)
        self._enforced_ok()
        return True, "route deleted"

    def _emit_route(
        self,
        action: str,
        route: _Route,
        *,
        violation: str = "",
        note: str = "",
        enforced: bool = False,
    ) -> None:
        oifs = [oif for _, oif in route.hops if oif]
        link = self._links.get(oifs[0]) if oifs else None
        reason = "; ".join(r for r in (violation, note) if r)
        self._emit_event(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH if violation else events_pb2.SEVERITY_INFO,
                network=events_pb2.Network(
                    action=action,
                    interface=",".join(self._ifname(i) for i in oifs),
                    link_kind=link.kind if link else "",
                    address="::/0" if route.family == AF_INET6 else "0.0.0.0/0",
                    gateway=",".join(g for g, _ in route.hops if g),
                    violation=bool(violation),
                    reason=reason[:REASON_CHARS],
                    enforced=enforced,
                ),
            )
        )

    # -- events ------------------------------------------------------------------------
    def _ifname(self, index: int) -> str:
        link = self._links.get(index)
        return link.name if link else f"if{index}"

    def _emit(
        self,
        action: str,
        link: _Link,
        *,
        violation: str = "",
        note: str = "",
        enforced: bool = False,
    ) -> None:
        reason = "; ".join(r for r in (violation, note) if r)
        severity = events_pb2.SEVERITY_HIGH if violation else events_pb2.SEVERITY_INFO
        if not reason and link.kind == "wireless" and action == "link_new":
            # Not yet a violation, but one `ip link set up` away from it.
            reason = "a wireless interface is present; it must stay down"
            severity = events_pb2.SEVERITY_MEDIUM
        self._emit_event(
            events_pb2.Event(
                severity=severity,
                network=events_pb2.Network(
                    action=action,
                    interface=link.name,
                    link_kind=link.kind,
                    violation=bool(violation),
                    reason=reason[:REASON_CHARS],
                    enforced=enforced,
                ),
            )
        )

    def _emit_event(self, event: events_pb2.Event) -> None:
        try:
            self._sink(event)
        except Exception:  # a failing sink must not stop the watching
            _logger.exception("network sensor: the event sink failed")


def _describe(error: BaseException) -> str:
    """A one-line account of ``error`` for logs, health and events."""
    # OSError carries errno, pyroute2's NetlinkError a code; both are errno values.
    code = getattr(error, "errno", None) or getattr(error, "code", None)
    if isinstance(code, int) and code > 0:
        return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
