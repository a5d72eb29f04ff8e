"""Sensors: each watches one part of the machine and hands events to the agent core.

The core knows sensors only through ``base.Sensor`` and the ``REGISTRY`` table below;
it never imports fanotify, pyudev or pyroute2 itself. Factories import their sensor
when called, so a sensor the configuration does not name costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # not at run time: the guardian process imports this package too
    from agent.sensors.base import EventSink, Sensor, SensorFactory


def _files(settings: dict[str, Any], sink: EventSink) -> Sensor:
    import logging  # noqa: PLC0415

    from baomi.labels import load_label_key  # noqa: PLC0415

    from agent.errors import ConfigError  # noqa: PLC0415
    from agent.sensors.files.sensor import FileGuard, FileGuardConfig  # noqa: PLC0415

    policies = settings.get("policies")
    if not settings.get("label_key"):
        raise ConfigError("the files sensor needs label_key: the file its label key is kept in")
    # The labelled inodes and the guardian's socket and journal are kept beside the
    # label key, in the state directory.
    state_dir = Path(settings["label_key"]).parent
    guardian_dir: Path | None = state_dir
    if settings.get("unsafe_no_guardian"):
        logging.getLogger(__name__).warning(
            "unsafe_no_guardian: the file guard fails open when the agent is killed"
        )
        guardian_dir = None
    return FileGuard(
        FileGuardConfig(
            roots=tuple(Path(r) for r in settings.get("roots", ())),
            label_key=load_label_key(Path(settings["label_key"]), create=True),
            inodes_db=state_dir / "labelled.db",
            policies=Path(policies) if policies else None,
            deadline=float(settings.get("deadline", 0.050)),
            guardian_dir=guardian_dir,
            pre_content=bool(settings.get("pre_content", True)),
            repeat_journal=state_dir / "repeats.journal",
            follow_filesystems=bool(settings.get("follow_filesystems", False)),
        ),
        sink,
    )


def _network(settings: dict[str, Any], sink: EventSink) -> Sensor:
    from agent.sensors.network import NetworkConfig, NetworkSensor  # noqa: PLC0415

    return NetworkSensor(
        NetworkConfig(
            gateways=tuple(str(g) for g in settings.get("gateways", ())),
            enforce=bool(settings.get("enforce", False)),
            netns=settings.get("netns"),
            sysfs=Path(settings.get("sysfs", "/sys")),
        ),
        sink,
    )


def _process(settings: dict[str, Any], sink: EventSink) -> Sensor:
    from agent.sensors.process import CAPTURE_DEVICES, ProcessConfig, ProcessSensor  # noqa: PLC0415

    return ProcessSensor(
        ProcessConfig(
            interval=float(settings.get("interval", 5.0)),
            capture_devices=tuple(settings.get("capture_devices", CAPTURE_DEVICES)),
        ),
        sink,
    )


def _usb(settings: dict[str, Any], sink: EventSink) -> Sensor:
    from agent.sensors.usb import UsbConfig, UsbSensor  # noqa: PLC0415

    return UsbSensor(
        UsbConfig(
            policies=Path(settings["policies"]),
            unsafe_report_only=bool(settings.get("unsafe_report_only", False)),
        ),
        sink,
    )


def _meeting(settings: dict[str, Any], sink: EventSink) -> Sensor:
    from datetime import timedelta  # noqa: PLC0415

    from agent.identity import load_identity  # noqa: PLC0415
    from agent.sensors.meeting import MeetingScheduleConfig, MeetingScheduler  # noqa: PLC0415

    sweep = settings.get("sweep")
    return MeetingScheduler(
        MeetingScheduleConfig(
            room=str(settings["room"]),
            rooms=Path(settings["rooms"]),
            meetings=Path(settings["meetings"]),
            subjects=Path(settings["subjects"]),
            key_pem=load_identity(Path(settings["state_dir"])).key_pem,
            sweep=Path(sweep) if sweep else None,
            lead=timedelta(minutes=float(settings.get("lead_minutes", 30))),
            bundle=Path(settings["state_dir"]) / "policy",
        ),
        sink,
    )


#: Sensor name -> factory(settings, sink). The agent starts what its configuration names.
REGISTRY: dict[str, SensorFactory] = {
    "files": _files,
    "network": _network,
    "process": _process,
    "usb": _usb,
    "meeting": _meeting,
}

__all__ = ["REGISTRY"]
