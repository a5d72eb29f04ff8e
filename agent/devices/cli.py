"""``baomi-agent devices``: the USB devices present and how the policy decides them.

``devices list`` prints every ``usb_device`` with its classes, its decision and the
rule that made it; ``devices generate-policy`` writes USBGuard rules pinning what is
present, to review and install as ``devices.rules``. Device strings are chosen by
whoever built the device, so everything printed is escaped: no product name can move
the cursor, clear the screen, retitle the terminal or reorder text (bidi overrides).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from baomi.clitext import fit, lang, t, table
from baomi.devices.classes import BADUSB, RECORDING_OR_PHONE, STORAGE, WIRELESS_HID
from baomi.display import escape

from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:
    from agent.sensors.usb import Observed

# The rule language, the policy and udev are imported by the commands that use them:
# every baomi-agent command builds this parser, and the running agent should not carry
# them (~3 MB) for a command it never runs.

_logger = logging.getLogger(__name__)

DEFAULT_POLICIES = Path("policies")  # relative to the working directory, as the agent's
CELL_CHARS = 40  # widest a device string is printed in the table (terminal cells, escaped)
RULE_CHARS = 60  # cells of the deciding rule printed in the table; --json has all of it
COLUMNS = ("port", "id", "auth", "decision", "class", "name", "serial", "rule")
#: Classes generate-policy does not pin: an allow rule would override Baomi's defaults
#: for them (sticks belong in usb-registry.toml, the rest must stay blocked).
NOT_PINNED: Final = RECORDING_OR_PHONE | {BADUSB, WIRELESS_HID, STORAGE}


def _cell(text: str, width: int = CELL_CHARS) -> str:
    return fit(escape(text), width)


def _present() -> list[Observed]:
    from agent.sensors.usb import list_devices  # noqa: PLC0415 - see the imports

    try:
        return list_devices()
    except (ImportError, OSError) as e:
        raise AgentError(
            f"cannot list USB devices: udev is unavailable ({e}); "
            "install libudev1 and run on the host itself, not in a container without /sys"
        ) from e


def _policies(args: argparse.Namespace) -> Path:
    """The device policy to judge by: ``--policies``, else the bundle the agent of
    ``--state-dir`` enforces (``STATE/policy``, where the collector's pushes land, so a
    stick approved in the console shows as allowed), else ``./policies``."""
    if args.policies is None:
        enforced = Path(args.state_dir) / "policy"
        args.policies = enforced if (enforced / "devices.rules").is_file() else DEFAULT_POLICIES
        print(f"device policy: {args.policies}", file=sys.stderr)
    return Path(args.policies)


def _cmd_list(args: argparse.Namespace) -> int:
    from baomi.devices.policy import DevicePolicy  # noqa: PLC0415 - see the imports

    from agent.sensors.usb import decide  # noqa: PLC0415

    policy = DevicePolicy.load(_policies(args))
    rows = []
    for observed in _present():
        device = observed.device
        decision = decide(policy, observed)
        rows.append(
            {
                "port": device.port,
                "id": device.usb_id,
                "authorized": observed.authorized,
                "decision": decision.target,
                "classes": sorted(decision.classes),
                "rule": decision.rule,
                "reason": decision.reason,
                "name": device.name,
                "manufacturer": device.manufacturer,
                "serial": device.serial,
                "interfaces": [str(i) for i in device.interfaces],
                "hash": device.descriptor_hash,
                "suspicious": observed.problem,
            }
        )
    if args.json:
        # ensure_ascii: every control character and non-ASCII byte is a \u escape.
        print(json.dumps(rows, ensure_ascii=True, indent=2))
        return 0
    language = lang()
    header = tuple(t(f"devices.col.{c}", language) for c in COLUMNS)
    rows_shown = [header] + [
        (
            _cell(str(r["port"]), 16),
            str(r["id"]),
            _cell(str(r["authorized"]), 4),
            t(f"devices.decision.{r['decision']}", language, default=str(r["decision"])),
            _cell(",".join(r["classes"]) or "-", 24),
            _cell(str(r["name"])),
            _cell(str(r["serial"]), 24),
            _cell(str(r["rule"]), RULE_CHARS),
        )
        for r in rows
    ]
    for line in table(rows_shown):
        print(line)
    if not rows:
        print(t("devices.none", language))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from baomi.devices.policy import DevicePolicy, generate_rules  # noqa: PLC0415 - see imports
    from baomi.devices.rules import device_bytes, quote  # noqa: PLC0415

    policy = DevicePolicy.load(_policies(args))
    pinned, left_out = [], []
    for observed in _present():
        device = observed.device
        classes = policy.evaluate(device, mtp=device.mtp).classes
        risky = sorted(classes & NOT_PINNED)
        why = f"suspicious: {observed.problem}" if observed.problem else ", ".join(risky)
        if why and not args.unsafe_include_all:
            where = quote(device_bytes(device.port))
            what = quote(device_bytes(device.usb_id))
            left_out.append(f"# left out: {what} at {where}: {quote(device_bytes(why))[1:-1]}")
            continue
        if why:
            _logger.warning("pinning %s at %s although it is %s", device.usb_id, device.port, why)
        pinned.append(device)
    text = generate_rules(pinned)
    if left_out:
        text += (
            "# Not pinned: storage (register sticks in usb-registry.toml instead), recording\n"
            "# devices, phones, network links, wireless input, BadUSB and suspicious devices\n"
            "# (pass --unsafe-include-all to pin them anyway):\n" + "\n".join(left_out) + "\n"
        )
    if args.out is None:
        sys.stdout.write(text)
        return 0
    _write_new(args.out, text, force=args.force)
    print(
        f"wrote rules for {len(pinned)} device(s) to {args.out} ({len(left_out)} left out); "
        f"review it, then install it as {args.policies / 'devices.rules'}"
    )
    return 0


def _write_new(path: Path, text: str, *, force: bool) -> None:
    """Write ``path`` whole or not at all; an existing file only with ``force``."""
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to replace it")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        Path(tmp).replace(path)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from e


def add_parser(subparsers: Any) -> None:
    """Add ``devices list`` and ``devices generate-policy`` to ``baomi-agent``."""
    devices = subparsers.add_parser("devices", help="USB devices present and the device policy")
    sub = devices.add_subparsers(dest="devices_command", required=True)

    def policies_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--policies",
            type=Path,
            help="directory of devices.rules and usb-registry.toml (default: the policy "
            "the agent of --state-dir enforces, STATE/policy, if it has one, else "
            f"./{DEFAULT_POLICIES})",
        )

    ls = sub.add_parser("list", help="every USB device present, its classes and decision")
    ls.add_argument("--json", action="store_true", help="all fields as JSON (ASCII-escaped)")
    policies_option(ls)
    ls.set_defaults(func=_cmd_list)

    gen = sub.add_parser("generate-policy", help="USBGuard rules pinning the devices present")
    gen.add_argument("--out", type=Path, help="write the rules to this file (default: stdout)")
    gen.add_argument("--force", action="store_true", help="replace --out if it exists")
    gen.add_argument(
        "--unsafe-include-all",
        action="store_true",
        help="also pin storage, recording devices, phones, network links, wireless input, "
        "BadUSB and suspicious devices (each overrides a default that blocks it)",
    )
    policies_option(gen)
    gen.set_defaults(func=_cmd_generate)
