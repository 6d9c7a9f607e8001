"""Fetching one DID document over verified HTTPS, for both drivers' fetch tasks.

Blocking (urllib): the drivers run it in a worker thread, bounded in time and size.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from email.message import Message
from typing import IO


class DocumentUnavailable(Exception):
    """One line for the log: why a DID document could not be had."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
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
    return bytes(body)
