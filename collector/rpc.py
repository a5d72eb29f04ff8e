"""The one place where the collector ends an RPC with a status code."""

from __future__ import annotations

from typing import NoReturn

import grpc


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, why: str) -> NoReturn:
    """End the RPC with ``code``; ``why`` tells the agent's operator what to do."""
    await context.abort(code, why)
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker
