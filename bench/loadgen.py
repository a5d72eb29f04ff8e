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
from pathlib import Path

import grpc
from baomi.v1 import events_pb2

from bench import events

METHOD = "/baomi.v1.Collector/Stream"


class LoadError(Exception):
    """A stream did not go as an agent's would."""


class HostStream:
    """One host's prepared batches and its stream to the collector."""

    def __init__(self, host_id: str, events_per_host: int, batch_events: int) -> None:
        self.host_id = host_id
        self.batches, self.last_hash = events.serialized_batches(
            host_id, events_per_host, batch_events
        )
        self.last_seq = events_per_host
        self.done_at = 0.0
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall | None = None

    async def open(self, address: str, creds: grpc.ChannelCredentials) -> None:
        """Connect (mTLS handshake) and read the first Ack, which must be a fresh chain."""
        self._channel = grpc.aio.secure_channel(address, creds)
        self._call = self._channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=events_pb2.Ack.FromString
        )()
        head = await self._call.read()
        if head is grpc.aio.EOF:
            raise LoadError(f"{self.host_id}: the stream ended before its first Ack")
        if head.up_to_seq != 0:
            raise LoadError(f"{self.host_id}: the store is not fresh (head {head.up_to_seq})")

    async def send(self, window: int) -> None:
        """Send every batch, at most ``window`` unacknowledged; return on the last Ack."""
        call = self._call
        if call is None:
            raise LoadError(f"{self.host_id}: send before open")
        slots = asyncio.Semaphore(window)

        async def write() -> None:
            for batch in self.batches:
                await slots.acquire()
                await call.write(batch)

        async def receive() -> None:
            while True:
                ack = await call.read()
                if ack is grpc.aio.EOF:
                    raise LoadError(f"{self.host_id}: the stream ended before every Ack")
                if ack.HasField("rejection"):
                    raise LoadError(f"{self.host_id}: batch rejected: {ack.rejection.reason}")
                slots.release()
                if ack.up_to_seq >= self.last_seq:
                    self.done_at = time.perf_counter()
                    if ack.up_to_seq != self.last_seq or ack.head_hash != self.last_hash:
                        raise LoadError(f"{self.host_id}: the last Ack names another head")
                    return

        await asyncio.gather(write(), receive())
        await call.done_writing()

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()


async def _run(args: argparse.Namespace) -> dict[str, object]:
    t = time.perf_counter()
    streams = [HostStream(events.host_name(h), args.events, args.batch) for h in range(args.hosts)]
    prebuild = time.perf_counter() - t
    wire_bytes = sum(len(b) for s in streams for b in s.batches)
    ca = args.ca.read_bytes()
    t = time.perf_counter()
    await asyncio.gather(
        *(
            s.open(
                args.address,
                grpc.ssl_channel_credentials(
                    root_certificates=ca,
                    private_key=(args.hosts_dir / f"{s.host_id}.key").read_bytes(),
                    certificate_chain=(args.hosts_dir / f"{s.host_id}.pem").read_bytes(),
                ),
            )
            for s in streams
        )
    )
    connect = time.perf_counter() - t
    print(json.dumps({"ready": True, "prebuild_s": prebuild, "connect_s": connect}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    cpu0 = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(s.send(args.window) for s in streams))
    elapsed = max(s.done_at for s in streams) - start
    cpu = time.process_time() - cpu0
    for s in streams:
        await s.close()
    total = args.hosts * args.events
    return {
        "events": total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
        "wire_mb_per_s": wire_bytes / elapsed / 1e6,
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
    except (grpc.RpcError, LoadError, OSError) as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
