"""A real collector in its own process, on free ports, for the benchmark.

``python -m bench.serve --store PATH --pki DIR`` prints one JSON line with the bound
ports once it serves, runs until SIGTERM or SIGINT, then stops the collector the normal
way (commit what is queued, sign a last checkpoint) and prints its ingest counters.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
from pathlib import Path

from collector.server import Collector, ServerConfig
from collector.store.sqlite import SQLiteStore


async def _serve(store: SQLiteStore, pki_dir: Path) -> None:
    config = ServerConfig(listen="127.0.0.1:0", enroll_listen="127.0.0.1:0", pki_dir=pki_dir)
    collector = Collector(store, config)
    await collector.start()
    print(json.dumps({"ports": collector.ports}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await collector.stop()
    stats = dataclasses.asdict(collector.ingest.stats)
    print(json.dumps({"stats": stats, "committed": collector.ingest.writer.committed}), flush=True)


def main() -> None:
    """Entry point of the collector process."""
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    p.add_argument("--store", type=Path, required=True, help="SQLite file")
    p.add_argument("--pki", type=Path, required=True, help="directory from pki.init_authority")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="collector: %(levelname)s %(message)s")
    store = SQLiteStore(args.store)
    try:
        asyncio.run(_serve(store, args.pki))
    finally:
        store.close()


if __name__ == "__main__":
    main()
