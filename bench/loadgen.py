"""The load generator: many hosts' mTLS streams to a collector, in its own process.

``python -m bench.loadgen ...`` builds every host's chained batches first, opens one
mTLS ``Stream`` per host and reads each first Ack (the chain head), then prints
``{"ready": ...}`` and waits for a line on stdin. On it, every stream sends its batches
with up to ``--window`` batches awaiting an Ack, and the clock stops when the last
stream's Ack covers its last event. One JSON line with the result goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from baomi.v1 import events_pb2

from bench import events

METHOD = "/baomi.v1.Collector/Stream"


@dataclass
class HostLoad:
    """One host's prepared stream."""

    host_id: str
    batches: list[bytes]
    last_seq: int
    last_hash: bytes
    channel: grpc.aio.Channel | None = None
    call: grpc.aio.StreamStreamCall | None = None
    done_at: float = 0.0
    acks: int = 0


async def _open(load: HostLoad, address: str, creds: grpc.ChannelCredentials) -> None:
    load.channel = grpc.aio.secure_channel(address, creds)
    load.call = load.channel.stream_stream(
        METHOD, request_serializer=None, response_deserializer=events_pb2.Ack.FromString
    )()
    head = await load.call.read()
    if not isinstance(head, events_pb2.Ack):
        raise RuntimeError(f"{load.host_id}: the stream ended before its first Ack")
    if head.up_to_seq != 0:
        raise RuntimeError(f"{load.host_id}: the store is not fresh (head seq {head.up_to_seq})")


async def _send(load: HostLoad, window: int) -> None:
    call = load.call
    assert call is not None
    slots = asyncio.Semaphore(window)

    async def receive() -> None:
        while True:
            ack = await call.read()
            if not isinstance(ack, events_pb2.Ack):
                raise RuntimeError(f"{load.host_id}: the stream ended before every Ack")
            if ack.HasField("rejection"):
                raise RuntimeError(f"{load.host_id}: batch rejected: {ack.rejection.reason}")
            load.acks += 1
            slots.release()
            if ack.up_to_seq >= load.last_seq:
                load.done_at = time.perf_counter()
                if ack.up_to_seq != load.last_seq or ack.head_hash != load.last_hash:
                    raise RuntimeError(f"{load.host_id}: final Ack names another head")
                return

    receiver = asyncio.create_task(receive())
    try:
        for batch in load.batches:
            await slots.acquire()
            if receiver.done():
                break
            await call.write(batch)
        await receiver
        await call.done_writing()
    finally:
        receiver.cancel()


async def _run(args: argparse.Namespace) -> dict[str, object]:
    t = time.perf_counter()
    loads = []
    for h in range(args.hosts):
        host_id = events.host_name(h)
        batches, last_hash = events.serialized_batches(host_id, args.events, args.batch)
        loads.append(HostLoad(host_id, batches, args.events, last_hash))
    prebuild = time.perf_counter() - t
    ca = args.ca.read_bytes()
    t = time.perf_counter()
    await asyncio.gather(
        *(
            _open(
                load, args.address,
                grpc.ssl_channel_credentials(
                    root_certificates=ca,
                    private_key=(args.hosts_dir / f"{load.host_id}.key").read_bytes(),
                    certificate_chain=(args.hosts_dir / f"{load.host_id}.pem").read_bytes(),
                ),
            )
            for load in loads
        )
    )
    connect = time.perf_counter() - t
    wire_bytes = sum(len(b) for load in loads for b in load.batches)
    print(json.dumps({"ready": True, "prebuild_s": prebuild, "connect_s": connect}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu0 = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(_send(load, args.window) for load in loads))
    elapsed = max(load.done_at for load in loads) - start
    cpu = time.process_time() - cpu0
    for load in loads:
        if load.channel is not None:
            await load.channel.close()
    total = args.hosts * args.events
    return {
        "events": total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
        "wire_mb_per_s": wire_bytes / elapsed / 1e6,
        "acks": sum(load.acks for load in loads),
        "cpu_s": cpu,
    }


def main() -> int:
    """Entry point of the load-generator process."""
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    p.add_argument("--address", required=True, help="HOST:PORT of the collector's mTLS port")
    p.add_argument("--ca", type=Path, required=True, help="the collector's CA (PEM)")
    p.add_argument("--hosts-dir", type=Path, required=True, help="HOST.key and HOST.pem files")
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--events", type=int, required=True, help="events per host")
    p.add_argument("--batch", type=int, default=1000, help="events per batch")
    p.add_argument("--window", type=int, default=4, help="batches in flight per stream")
    args = p.parse_args()
    try:
        result = asyncio.run(_run(args))
    except (grpc.RpcError, RuntimeError, OSError) as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
