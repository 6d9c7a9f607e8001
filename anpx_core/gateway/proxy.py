"""Proxy trust: which reverse proxies in front of the gateway are believed, and the
client address a request or tunnel handshake really comes from."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Longest X-Forwarded-For whose hops are looked at; a longer one counts as the proxy's own.
MAX_FORWARDED_FOR = 1024


class ProxyTrust:
    def __init__(self, trusted_proxies: Sequence[IPNetwork]) -> None:
        self.networks = list(trusted_proxies)

    def trusted(self, address: str) -> bool:
        """Is ``address`` (an IP, IPv6 possibly in brackets) one of the trusted proxies?"""
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def client(self, peer_host: str, forwarded: str | None) -> str:
        """The address a request or tunnel handshake comes from, for logs, per-address caps,
        the rate limit, X-Real-IP and the failure limit.

        Behind a trusted proxy it is the rightmost X-Forwarded-For hop that is not a trusted
        proxy (the one the nearest proxy appended). A hop that is not an IP address, or an
        oversized header, cannot come from a proxy: the proxy's own address is used, so
        made-up values never give an attacker a fresh address to fail from.
        """
        if not self.trusted(peer_host):
            return peer_host
        if forwarded is None or len(forwarded) > MAX_FORWARDED_FOR:
            return peer_host
        for hop in reversed(forwarded.split(",")):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer_host
            if not self.trusted(hop):
                return hop
        return peer_host
