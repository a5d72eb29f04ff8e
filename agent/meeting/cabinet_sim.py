"""``baomi-cabinet-sim``: a shielding cabinet speaking Baomi's Modbus/TCP register map.

Used by the tests and ``make demo`` in place of a real cabinet (see
:mod:`agent.meeting.cabinet` for the map). ``--malformed`` answers every request with a
truncated, inconsistent MBAP frame, which the check must survive as ``unknown``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from baomi.meeting.rooms import parse_address

from agent.meeting.cabinet import MAGIC, MAX_DOORS

_logger = logging.getLogger(__name__)

DOORS = 4  # the simulated cabinet's doors
SLOTS = 20  # and phone slots


def registers(*, door_open: list[int], powered: bool, slots: int) -> list[int]:
    """The register values of the simulated cabinet."""
    bitmap = sum(1 << (d - 1) for d in door_open)
    return [MAGIC, DOORS, bitmap, int(powered), int(powered), SLOTS, min(slots, SLOTS)]


async def _malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request with an MBAP header whose length promises bytes never sent."""
    try:
        while request := await reader.read(260):  # 260: the largest Modbus/TCP ADU
            tid = request[:2] if len(request) >= 2 else b"\0\0"
            writer.write(tid + b"\x00\x00\x00\xff\x01\x03\x0e\xba")  # 255 promised, 4 sent
            await writer.drain()
    finally:
        writer.close()


async def serve(host: str, port: int, values: list[int], *, malformed: bool) -> None:
    """Serve until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if malformed:
        server = await asyncio.start_server(_malformed, host, port)
        print(f"cabinet simulator (malformed frames) on {host}:{port}", flush=True)
        async with server:
            await stop.wait()
        return
    from pymodbus.datastore import (  # noqa: PLC0415 (keeps --help fast)
        ModbusDeviceContext,
        ModbusSequentialDataBlock,
        ModbusServerContext,
    )
    from pymodbus.server import ModbusTcpServer  # noqa: PLC0415

    # pymodbus's device context adds 1 to every address (Modbus "register 1" is
    # address 0), so the block starts at 1 for a client's address 0 to hit values[0].
    block = ModbusSequentialDataBlock(1, values)  # type: ignore[no-untyped-call]
    context = ModbusServerContext(devices=ModbusDeviceContext(hr=block), single=True)
    modbus = ModbusTcpServer(context, address=(host, port))
    await modbus.serve_forever(background=True)
    print(f"cabinet simulator on {host}:{port}: registers {values}", flush=True)
    await stop.wait()
    await modbus.shutdown()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``baomi-cabinet-sim``."""
    parser = argparse.ArgumentParser(prog="baomi-cabinet-sim", description=__doc__)
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve Modbus/TCP on")
    parser.add_argument(
        "--door-open", type=int, action="append", default=[], metavar="N", help="door N is open"
    )
    parser.add_argument("--unpowered", action="store_true", help="mains and shielding off")
    parser.add_argument("--slots", type=int, default=0, help="phone slots occupied")
    parser.add_argument("--malformed", action="store_true", help="answer with broken frames")
    args = parser.parse_args(argv)
    try:
        host, port = parse_address(args.listen)
    except ValueError as e:
        parser.error(str(e))
    if any(not 1 <= d <= min(DOORS, MAX_DOORS) for d in args.door_open):
        parser.error(f"doors are numbered 1-{DOORS}")
    logging.basicConfig(level=logging.WARNING)
    # pymodbus warns at every start that its datastore API changes in v4: noise here.
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    values = registers(door_open=args.door_open, powered=not args.unpowered, slots=args.slots)
    try:
        asyncio.run(serve(host, port, values, malformed=args.malformed))
    except OSError as e:
        print(f"baomi-cabinet-sim: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
