"""Fetching DID documents for the gateway core's DID-WBA check (asyncio).

The core asks for a document (``DocumentCache.on_wanted``); a task fetches it over HTTPS in a
worker thread (urllib), hands the bytes or the failure to the cache and lets the core decide
the handshakes that waited for it. The trio driver has the same file.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.error
import urllib.request

from anpx_core.didwba import DocumentCache, did_document_url
from anpx_core.gateway import GatewayCore

log = logging.getLogger("anpx.gateway")


class DocumentUnavailable(Exception):
    """One line for the log: why a DID document could not be had."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a 3xx becomes an HTTPError: the document must be where the DID says


def fetch_document(url: str, timeout: float, ca_file: str | None, max_bytes: int) -> bytes:
    """GET ``url`` over verified HTTPS (no proxies, no redirects), at most ``max_bytes``."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DocumentUnavailable(f"cannot load did_ca_file {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context), _NoRedirects
    )
    request = urllib.request.Request(
        url, headers={"Accept": "application/did+json, application/json", "User-Agent": "anpx"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise DocumentUnavailable(f"{url} answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise DocumentUnavailable(f"{url} is unreachable: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed answer
        raise DocumentUnavailable(f"{url} is unreachable: {exc or type(exc).__name__}") from None
    if len(body) > max_bytes:
        raise DocumentUnavailable(f"{url} served more than {max_bytes} bytes")
    return body


def _wall(core: GatewayCore, pump) -> float:
    return pump.now() + core.wall_offset  # the clock the core's checks use


async def serve_documents(core: GatewayCore, pump, cache: DocumentCache) -> None:
    """Fetch what the cache asks for, until cancelled."""
    queue: asyncio.Queue[str] = asyncio.Queue(cache.max_pending + 1)
    cache.on_wanted = queue.put_nowait  # the cache never has more than max_pending asked
    tasks: set[asyncio.Task] = set()
    try:
        while True:
            did = await queue.get()
            task = asyncio.create_task(_fetch(core, pump, cache, did))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()


async def _fetch(core: GatewayCore, pump, cache: DocumentCache, did: str) -> None:
    url = did_document_url(did)
    # urllib's timeout is per socket operation: bound the whole fetch as well
    try:
        body = await asyncio.wait_for(
            asyncio.to_thread(
                fetch_document, url, cache.fetch_timeout, cache.ca_file, cache.max_document_bytes
            ),
            cache.fetch_timeout * 2,
        )
    except DocumentUnavailable as exc:
        cache.failed(did, str(exc), _wall(core, pump))
    except asyncio.TimeoutError:
        cache.failed(
            did, f"{url} did not answer in {cache.fetch_timeout * 2:.0f}s", _wall(core, pump)
        )
    else:
        cache.store(did, body, _wall(core, pump))
    core.resume_handshakes(pump.now())
    pump.sync()
