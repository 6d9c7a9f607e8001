"""Fetching one DID document over verified HTTPS, for both drivers' fetch tasks.

Blocking (urllib): the drivers run it in a worker thread, bounded in time and size.

A peer chooses the DID and so the URL (server-side request forgery): the core checks the
host name against ``did_fetch_hosts``; here, with ``public_only``, every address the name
resolves to is checked when connecting, and only a public one is dialled. The socket connects
to the address that was checked (no second lookup a rebinding DNS server could answer
differently); TLS still verifies the certificate for the host name.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import ssl
import urllib.error
import urllib.request
from email.message import Message
from typing import IO, Any


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


def is_public(address: str) -> bool:
    """Globally routable unicast: not loopback, private, link-local, shared (CGNAT),
    reserved, multicast or unspecified; IPv4-mapped and NAT64 IPv6 judged by their IPv4."""
    ip = ipaddress.ip_address(address.partition("%")[0])  # drop an IPv6 scope id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.is_global and not ip.is_multicast


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class _Refused(OSError):
    """No address of the host may be dialled (the message names them, for the log)."""


def connect_public(host: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the first public address of ``host`` that answers."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from None
    refused: list[str] = []
    error: OSError | None = None
    for family, kind, proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if not is_public(address):
            refused.append(address)
            continue
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    if error is not None:
        raise error
    raise _Refused(
        f"{host} resolves to {', '.join(sorted(set(refused)))}, not a public address "
        "(list the host in did_fetch_hosts to allow it)"
    )


class _PublicHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection that dials only public addresses."""

    def __init__(self, host: str, *, context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(host, context=context, **kwargs)
        self._tls = context

    def connect(self) -> None:
        sock = connect_public(self.host, self.port, self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_PublicHTTPSConnection, context=self._tls), req)


def fetch_document(
    url: str, timeout: float, ca_file: str | None, max_bytes: int, *, public_only: bool = True
) -> bytes:
    """GET ``url`` over verified HTTPS (no proxies, no redirects), at most ``max_bytes``;
    with ``public_only``, from a public address only."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DocumentUnavailable(f"cannot load did_ca_file {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    https = (
        _PublicHTTPSHandler(context)
        if public_only
        else urllib.request.HTTPSHandler(context=context)
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), https, _NoRedirects)
    request = urllib.request.Request(
        url, headers={"Accept": "application/did+json, application/json", "User-Agent": "anpx"}
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise DocumentUnavailable(f"{url} answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, _Refused):
            raise DocumentUnavailable(f"{url} not fetched: {exc.reason}") from None
        raise DocumentUnavailable(f"{url} is unreachable: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed answer
        raise DocumentUnavailable(f"{url} is unreachable: {exc or type(exc).__name__}") from None
    if len(body) > max_bytes:
        raise DocumentUnavailable(f"{url} served more than {max_bytes} bytes")
    return bytes(body)
