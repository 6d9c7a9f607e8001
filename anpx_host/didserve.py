"""Fetching DID documents for the gateway core's DID-WBA check, on either driver (anyio).

The core asks for a document (``DocumentCache.on_wanted``); a task fetches it over HTTPS in a
worker thread (:mod:`anpx_host.didfetch`), hands the bytes or the failure to the cache and
lets the core decide the handshakes that waited for it.
"""

from __future__ import annotations

from functools import partial

import anyio

from anpx_core.didwba import DocumentCache, did_document_url
from anpx_core.gateway import GatewayCore

from .appcalls import Pump
from .didfetch import DocumentUnavailable, fetch_document


async def serve_documents(core: GatewayCore, pump: Pump, cache: DocumentCache) -> None:
    """Fetch what the cache asks for, until cancelled."""
    send, receive = anyio.create_memory_object_stream[str](cache.max_pending + 1)
    cache.on_wanted = send.send_nowait  # the cache never has more than max_pending asked
    async with anyio.create_task_group() as tasks, receive:
        async for did in receive:
            tasks.start_soon(_fetch, core, pump, cache, did)


async def _fetch(core: GatewayCore, pump: Pump, cache: DocumentCache, did: str) -> None:
    url = did_document_url(did)
    fetch = partial(
        fetch_document,
        url,
        cache.fetch_timeout,
        cache.ca_file,
        cache.max_document_bytes,
        public_only=cache.public_only,
    )
    # urllib's timeout is per socket operation: bound the whole fetch as well
    with anyio.move_on_after(cache.fetch_timeout * 2) as scope:
        try:
            body = await anyio.to_thread.run_sync(fetch, abandon_on_cancel=True)
        except DocumentUnavailable as exc:
            cache.failed(did, str(exc), pump.now() + core.wall_offset)
        else:
            cache.store(did, body, pump.now() + core.wall_offset)
    if scope.cancelled_caught:
        why = f"{url} did not answer in {cache.fetch_timeout * 2:.0f}s"
        cache.failed(did, why, pump.now() + core.wall_offset)
    core.resume_handshakes(pump.now())
    pump.sync()
