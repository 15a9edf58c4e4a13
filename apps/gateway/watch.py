"""Keeping a process's copy of shared state fresh: follow a Redis channel, and look again every so often.

The policy snapshot and the open circuit breakers are both copied into each
gateway process, reloaded when another process announces a change on pub/sub,
and re-checked on a timer in case an announcement was lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

logger = logging.getLogger(__name__)


async def follow(client: aioredis.Redis, channel: str, on_message: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``on_message`` for every message on ``channel``, subscribing again after a lost connection."""
    while True:
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(channel)
            async for _message in pubsub.listen():
                await on_message()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s listener failed; reconnecting", what)
            await asyncio.sleep(0.5)


async def every(seconds: float, action: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``action`` every ``seconds``; a failure is logged and the next round tries again."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await action()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed", what)
