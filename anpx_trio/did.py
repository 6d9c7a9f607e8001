"""Fetching DID documents for the gateway core's DID-WBA check (trio).

The core asks for a document (``DocumentCache.on_wanted``); a task fetches it over HTTPS in a
worker thread (anpx_host.didfetch), hands the bytes or the failure to the cache and lets the core decide
the handshakes that waited for it. The asyncio driver mirrors this file.
"""

from __future__ import annotations

import logging
from functools import partial

import trio

from anpx_core.didwba import DocumentCache, did_document_url
from anpx_core.gateway import GatewayCore
from anpx_host.didfetch import DocumentUnavailable, fetch_document

from ._pump import Pump

log = logging.getLogger("anpx.gateway")


def _wall(core: GatewayCore, pump: Pump) -> float:
    return pump.now() + core.wall_offset  # the clock the core's checks use


async def serve_documents(core: GatewayCore, pump: Pump, cache: DocumentCache) -> None:
    """Fetch what the cache asks for, until cancelled."""
    send, receive = trio.open_memory_channel[str](cache.max_pending + 1)
    cache.on_wanted = send.send_nowait  # the cache never has more than max_pending asked
    async with trio.open_nursery() as nursery:
        async for did in receive:
            nursery.start_soon(_fetch, core, pump, cache, did)


async def _fetch(core: GatewayCore, pump: Pump, cache: DocumentCache, did: str) -> None:
    url = did_document_url(did)
    # urllib's timeout is per socket operation: bound the whole fetch as well
    with trio.move_on_after(cache.fetch_timeout * 2) as scope:
        try:
            body = await trio.to_thread.run_sync(
                partial(
                    fetch_document,
                    url,
                    cache.fetch_timeout,
                    cache.ca_file,
                    cache.max_document_bytes,
                    public_only=cache.public_only,
                ),
                abandon_on_cancel=True,
            )
        except DocumentUnavailable as exc:
            cache.failed(did, str(exc), _wall(core, pump))
        else:
            cache.store(did, body, _wall(core, pump))
    if scope.cancelled_caught:
        cache.failed(
            did, f"{url} did not answer in {cache.fetch_timeout * 2:.0f}s", _wall(core, pump)
        )
    core.resume_handshakes(pump.now())
    pump.sync()
