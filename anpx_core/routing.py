"""Which receiver serves a request: routes claimed by receivers, matched by Host and path.

A receiver claims routes in its upgrade request (header ``anpx-routes``, comma
separated). A route is ``[host]/path-prefix``: ``api.example.com/`` (that host,
any path), ``/agents/bob`` (any host, that prefix), ``api.example.com/v2``.
A receiver that claims nothing serves the default route ``/`` (any host, any
path). A request goes to the routes of its Host first (longest prefix wins),
then to host-less routes (longest prefix wins); prefixes match whole path
segments (``/api`` matches ``/api`` and ``/api/x``, not ``/apix``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from .strict import StrictError, check_host, check_target

ROUTES_HEADER = "anpx-routes"
DEFAULT_PREFIX = "/"
MAX_KNOWN_ROUTES = 10_000  # routes remembered after their receivers left (for 503 vs 404)


@dataclass(frozen=True, slots=True)
class Route:
    host: str | None  # lower-case, no port; None: any host
    prefix: str  # starts with "/", no trailing "/" except the root

    def __str__(self) -> str:
        return f"{self.host or ''}{self.prefix}"

    def matches(self, path: str) -> bool:
        return self.prefix == "/" or path == self.prefix or path.startswith(self.prefix + "/")

    def within(self, other: Route) -> bool:
        """Is every request this route could match also matched by ``other``?"""
        return (other.host is None or other.host == self.host) and other.matches(self.prefix)


DEFAULT_ROUTE = Route(None, DEFAULT_PREFIX)


def parse_route(spec: str) -> Route:
    """``"api.example.com/v2"`` -> Route; ValueError with a readable reason."""
    spec = spec.strip()
    if not spec:
        raise ValueError("an empty route")
    if spec in ("*", "/"):
        return DEFAULT_ROUTE
    host, slash, path = spec.partition("/")
    prefix = "/" + path if slash else "/"
    if any(c in spec for c in " ,;?#\t\r\n"):
        raise ValueError(f"route {spec!r} may not contain spaces, ',', ';', '?' or '#'")
    if len(prefix) > 1:
        prefix = prefix.rstrip("/") or "/"
    if host:
        try:  # a receiver's claim is a network value: only a real host name may route
            host = normalize_host(check_host(host))
        except StrictError:
            host = ""
        if not host:
            raise ValueError(f"route {spec!r} has an invalid host")
    try:
        check_target(prefix)
    except StrictError:
        raise ValueError(f"route {spec!r} has an invalid path prefix") from None
    return Route(host or None, prefix)


def normalize_host(host: str) -> str:
    """Lower-case host without port (IPv6 literals keep their brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def format_routes(routes: Iterable[Route]) -> str:
    return ", ".join(str(route) for route in routes)


def parse_routes_header(value: str | None) -> list[Route]:
    """The routes a receiver claims; none claimed means the default route."""
    if value is None or not value.strip():
        return [DEFAULT_ROUTE]
    routes = {parse_route(item) for item in value.split(",") if item.strip()}
    return sorted(routes, key=lambda r: (r.host or "", r.prefix))


def claims_allowed(claims: list[Route], allowed: list[Route]) -> Route | None:
    """The first claim not covered by ``allowed``, or None when every claim is."""
    for claim in claims:
        if not any(claim.within(rule) for rule in allowed):
            return claim
    return None


class RouteTable:
    """Live receivers by route, and every route seen, for 503 (gone) vs 404 (unknown)."""

    def __init__(self) -> None:
        self._live: dict[Route, list[Hashable]] = {}
        self._known: OrderedDict[Route, None] = OrderedDict()

    def add(self, receiver: Hashable, routes: list[Route]) -> None:
        for route in routes:
            self._live.setdefault(route, []).append(receiver)
            self._known[route] = None
            self._known.move_to_end(route)
        while len(self._known) > MAX_KNOWN_ROUTES:
            oldest = next(iter(self._known))
            if oldest in self._live:
                break  # never forget a live route
            del self._known[oldest]

    def remove(self, receiver: Hashable, routes: list[Route]) -> None:
        for route in routes:
            members = self._live.get(route)
            if members and receiver in members:
                members.remove(receiver)
                if not members:
                    del self._live[route]

    def match(self, host: str | None, path: str) -> Route | None:
        """The best route for a request among every route seen (live or not)."""
        host = normalize_host(host) if host else None
        best_host: Route | None = None
        best_any: Route | None = None
        for route in self._known:
            if not route.matches(path):
                continue
            if route.host is None:
                if best_any is None or len(route.prefix) > len(best_any.prefix):
                    best_any = route
            elif route.host == host and (
                best_host is None or len(route.prefix) > len(best_host.prefix)
            ):
                best_host = route
        return best_host or best_any

    def receivers(self, route: Route) -> list[Hashable]:
        return self._live.get(route, [])

    @property
    def routes(self) -> dict[str, int]:
        """Every known route with its number of live receivers."""
        return {str(route): len(self._live.get(route, ())) for route in self._known}
