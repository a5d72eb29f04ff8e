"""The agent core: spool, sensors, heartbeats and the stream, tied together.

Order of duties at start: open the spool (refusing a corrupt one), spool what the
event journal holds beyond it (a killed agent's last events), record an unclean
previous stop as a tamper event, then start sensors, heartbeats and the stream.

An offline host (``offline``, see :mod:`agent.offline`) has no stream and needs no
certificate: its events stay in the spool until ``baomi-agent export`` carries them to
the collector and an import there is confirmed; heartbeats and the log say how much
waits, loudly once the spool passes its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baomi.labels import LABEL_KEY_FILE, load_label_key
from baomi.policy.errors import LabelError
from baomi.policy.policyset import PolicySet
from baomi.v1 import events_pb2

from agent import __version__
from agent.destroy import Destroyer, load_policies, signing_key
from agent.destroy import serve as serve_destroy
from agent.errors import AgentError
from agent.heap import keep_heap_thresholds, return_freed_heap
from agent.identity import Identity, check_addresses, load_identity
from agent.journal import EventJournal, JournalError
from agent.label_orders import LabelOrders
from agent.policy import PolicyKeeper
from agent.recorder import Recorder
from agent.sensors import REGISTRY
from agent.sensors.base import Health, PolicyAware, Sensor
from agent.spool import DEFAULT_MAX_BYTES, Spool
from agent.stream import StreamClient, StreamConfig

_logger = logging.getLogger(__name__)
JOURNAL_NAME = "events.journal"
#: Events waiting this long with nothing acknowledged make the stream "not delivering".
NOT_DELIVERING_SECONDS = 60.0
_EXPORT_HINT = (
    "export it to a registered stick ('baomi-agent export --out FILE'), import it at the "
    "collector, then 'baomi-agent export --forget-through SEQ'"
)


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """How the agent runs."""

    state_dir: Path
    heartbeat_seconds: float = 30.0  # between agent_status events
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    stream: StreamConfig = field(default_factory=StreamConfig)
    sensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> settings
    offline: bool = False  # no collector: record for export (agent.offline)
    host_id: str | None = None  # offline, before enrolment: the id to record under
    collectors: tuple[str, ...] = ()  # HOST:PORT each; empty: those stored at enrolment


class Agent:
    """One running agent."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        if config.offline:
            # Here, not at the top: agent.offline loads cryptography's X.509 layer (for
            # enrolment by file), which a connected agent never needs.
            from agent.offline import prepare  # noqa: PLC0415

            self.host_id = prepare(config.state_dir, config.host_id)
            self.identity: Identity | None = None
            self.stream: StreamClient | None = None
        else:
            identity = self.identity = load_identity(config.state_dir)
            if config.collectors:
                addresses = check_addresses(config.collectors, "collector")
                identity = self.identity = dataclasses.replace(
                    identity, collector=addresses[0], collectors=addresses
                )
            self.host_id = identity.host_id
        self.spool = Spool(config.state_dir / "spool.db", max_bytes=config.spool_max_bytes)
        self.spool.on_full = self._spool_full
        if not config.offline:
            if not identity.collector:  # enrolled by file: there is no collector to reach
                self.spool.close()
                raise AgentError(
                    f"host {identity.host_id} was enrolled by file, for a host with no "
                    "collector: run it with --offline (or offline = true under [run] in "
                    "the configuration file)"
                )
            self.stream = StreamClient(
                identity, self.spool, config.stream, on_tamper=self._collector_refused
            )
        try:
            self.journal = EventJournal(config.state_dir / JOURNAL_NAME)
        except (JournalError, OSError) as e:
            raise AgentError(f"cannot open the event journal: {e}") from e
        self.recorder = Recorder(self.spool, self._wake_stream, self.journal)
        self.policy = (
            None
            if self.stream is None
            else PolicyKeeper(config.state_dir, identity, self._apply_policy, self.emit)
        )
        files = config.sensors.get("files", {})
        # Label orders come from the collector: an offline host has none to apply.
        self.label_orders = (
            None
            if self.identity is None
            else LabelOrders(
                config.state_dir,
                self.identity,
                self.emit,
                roots=[Path(r) for r in files.get("roots", [])],
                label_key=Path(files.get("label_key") or config.state_dir / LABEL_KEY_FILE),
            )
        )
        # The policy destruction requests are checked against: the files sensor's, then
        # each bundle put in force.
        self._policy_dir = Path(files.get("policies") or config.state_dir / "policy")
        self.destroyer = None if self.identity is None else self._destroyer(files)
        self.sensors: list[Sensor] = []
        self.state = "starting"
        self._loop: asyncio.AbstractEventLoop | None = None

    def _destroyer(self, files: dict[str, Any]) -> Destroyer:
        assert self.identity is not None  # noqa: S101 - a connected host's
        key_file = Path(files.get("label_key") or self.config.state_dir / LABEL_KEY_FILE)

        def label_key() -> bytes | None:
            try:
                return load_label_key(key_file)
            except LabelError:
                return None

        return Destroyer(
            self.config.state_dir,
            host_id=self.identity.host_id,
            verify_key=signing_key(self.identity),
            label_key=label_key,
            policies=self._policies,
            emit=self.emit,
        )

    def _policies(self) -> PolicySet | None:
        return load_policies(self._policy_dir)()  # the directory of the bundle in force

    def emit(self, event: events_pb2.Event) -> None:
        """Hand one event to the recorder, which spools it. Safe from any thread."""
        self.recorder.record(event)

    def _collector_refused(self, kind: str, detail: str) -> None:
        """The collector's head is not this host's chain: said loudly, and recorded."""
        _logger.error("%s: %s", kind, detail)
        self.emit(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH,
                tamper=events_pb2.Tamper(kind=kind, detail=detail[:2000]),
            )
        )

    def _wake_stream(self) -> None:
        loop, stream = self._loop, self.stream
        if stream is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stream.notify)

    def _spool_full(self, size: int) -> None:
        self.state = "spool_full"
        _logger.error(
            "spool %s holds %d bytes, over its limit of %d: %s; nothing is dropped",
            self.spool.path,
            size,
            self.spool.max_bytes,
            _EXPORT_HINT
            if self.stream is None
            else "the collector has not acknowledged events for a while; check the link",
        )
        # Called with the spool lock held: build and spool the alarm once it is free.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(
                lambda: self.emit(self._status("spool_full", events_pb2.SEVERITY_HIGH))
            )

    def _status(self, state: str, severity: int = events_pb2.SEVERITY_INFO) -> events_pb2.Event:
        health = {s.name: s.health() for s in self.sensors}
        waiting = self.spool.pending()
        stream = self.stream
        quiet = stream.quiet_seconds(waiting) if stream is not None else 0.0
        if stream is None:
            health["stream"] = self._offline_health(waiting)
        elif stream.last_error and not stream.connected:
            health["stream"] = Health("degraded", stream.last_error)
        elif quiet > NOT_DELIVERING_SECONDS:
            health["stream"] = Health(
                "degraded",
                f"not delivering: {waiting} events wait, none acknowledged for {quiet:.0f} s",
            )
        return events_pb2.Event(
            severity=severity,  # type: ignore[arg-type]
            agent_status=events_pb2.AgentStatus(
                version=__version__,
                policy_version=self.policy.version if self.policy is not None else "",
                sensors=[
                    events_pb2.SensorHealth(name=n, state=h.state, detail=h.detail[:500])
                    for n, h in sorted(health.items())
                ],
                spool_events=waiting,
                spool_bytes=self.spool.size_bytes(),
                state=state,
                heartbeat_seconds=max(1, round(self.config.heartbeat_seconds)),
            ),
        )

    def _offline_health(self, waiting: int) -> Health:
        """How the record of an offline host stands: what waits for export."""
        exported = self.spool.exported
        detail = (
            f"offline: {waiting} events kept until an import is confirmed; "
            f"exports reach seq {exported}"
        )
        if self.spool.full:
            return Health("degraded", f"{detail}; the spool is over its limit: {_EXPORT_HINT}")
        return Health("offline", detail)

    def _record_unclean_stop(self, recovered: int) -> None:
        unclean, last_alive_us = self.spool.mark_running()
        if not unclean:
            return
        detail = "the agent did not stop cleanly; nothing was enforced in the gap"
        if recovered:
            detail += f"; {recovered} events it had recorded were recovered from its journal"
        event = events_pb2.Event(
            severity=events_pb2.SEVERITY_HIGH,
            tamper=events_pb2.Tamper(kind="unclean_stop", detail=detail),
        )
        event.tamper.gap_start.FromMicroseconds(last_alive_us)
        event.tamper.gap_end.GetCurrentTime()
        _logger.warning("previous run ended uncleanly; recorded the gap as a tamper event")
        self.emit(event)

    def _apply_policy(self, directory: Path) -> None:
        """Put a policy bundle in force in every sensor that enforces policy.

        Each sensor loads and checks the files before it switches, so a bundle it
        refuses leaves it on its last good policy. (Only the file guard enforces policy
        so far; with more such sensors this must become load-all-then-switch-all.)
        """
        for sensor in self.sensors:
            if isinstance(sensor, PolicyAware):
                sensor.apply_policy(directory)
        self._policy_dir = directory

    def _start_sensors(self) -> None:
        for name, settings in self.config.sensors.items():
            factory = REGISTRY.get(name)
            if factory is None:
                _logger.error(
                    "unknown sensor %r in configuration; known: %s",
                    name,
                    ", ".join(sorted(REGISTRY)) or "none",
                )
                continue
            try:
                sensor = factory(settings, self.emit)
            except AgentError as e:
                _logger.error("sensor %s not started: %s", name, e)
                continue
            self.sensors.append(sensor)
        by_name = {s.name: s for s in self.sensors}
        usb, process = by_name.get("usb"), by_name.get("process")
        if usb is not None and process is not None:
            # A camera or microphone just plugged in: look for who records with it now.
            usb.on_device_event = process.check_now  # type: ignore[attr-defined]
        files = by_name.get("files")
        if files is not None and self.label_orders is not None:
            # The label inventory walks the trees only after the guard saw them change.
            self.label_orders.inventory.changes = lambda: files.tree_changes  # type: ignore[attr-defined]
        for sensor in self.sensors:
            sensor.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        recovered = self.recorder.recover()  # what a killed agent recorded but not spooled
        self.recorder.start()
        self._record_unclean_stop(recovered)
        self._start_sensors()
        if self.policy is not None:
            self.policy.load_last_good()
        self.state = "running"
        self.emit(self._status("started"))
        return_freed_heap()  # what the start-up (policy load, scan of the trees) let go
        streaming = asyncio.create_task(self._stream())
        watching = asyncio.create_task(
            self.policy.watch() if self.policy is not None else _forever()
        )
        ordering = asyncio.create_task(
            self.label_orders.run(self.config.heartbeat_seconds)
            if self.label_orders is not None
            else _forever()
        )
        destroying = asyncio.create_task(
            serve_destroy(self.config.state_dir, self.destroyer)
            if self.destroyer is not None
            else _forever()
        )
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.heartbeat_seconds)
                if not stop.is_set():
                    self.spool.touch_alive()
                    self.emit(self._status(self.state))
                    return_freed_heap()  # and what the periodic passes let go since
                if streaming.done() and not stop.is_set():  # it never should: start it again
                    _logger.error("the event stream ended (%s); starting it again", streaming)
                    streaming = asyncio.create_task(self._stream())
        finally:
            watching.cancel()
            await _ended(watching, "the policy watch")
            ordering.cancel()
            await _ended(ordering, "the label orders")
            destroying.cancel()
            await _ended(destroying, "the destruction socket")
            for sensor in self.sensors:
                sensor.stop()
            self.emit(self._status("stopping"))
            await asyncio.to_thread(self.recorder.stop)
            await self._drain(streaming)
            self.spool.mark_stopped()
            self.spool.close()
            self.journal.close()

    async def _stream(self) -> None:
        """Stream to the collector; offline, nothing is sent (the spool keeps it all)."""
        await (self.stream.run() if self.stream is not None else _forever())

    async def _drain(self, streaming: asyncio.Task[None], seconds: float = 3.0) -> None:
        """Give the stream a moment to deliver the last events, then stop it."""
        head, _ = self.spool.head
        stream = self.stream
        if stream is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    # Polls another task's progress; nothing else waits on it.
                    while stream.acked_seq < head and not streaming.done():  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
        streaming.cancel()
        await _ended(streaming, "the event stream")


async def _forever() -> None:
    """What an offline agent runs in place of the stream and the policy watch."""
    await asyncio.Event().wait()


async def _ended(task: asyncio.Task[None], what: str, seconds: float = 5.0) -> None:
    """Wait for a cancelled task to end, at most ``seconds``: one part that does not
    stop (a gRPC call stuck in its channel, say) must not keep the rest running."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        _logger.error("%s did not stop within %.0f s; stopping without it", what, seconds)
    elif not task.cancelled() and (error := task.exception()) is not None:
        _logger.error("%s ended with %s", what, error)


def run_agent(config: AgentConfig) -> None:
    """Run an agent until SIGINT or SIGTERM."""
    keep_heap_thresholds()

    async def main() -> None:
        agent = Agent(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if agent.identity is None:
            _logger.info(
                "agent %s offline: recording to %s for export", agent.host_id, agent.spool.path
            )
        else:
            _logger.info(
                "agent %s streaming to %s", agent.host_id, ", ".join(agent.identity.addresses)
            )
        await agent.run(stop)

    asyncio.run(main())
