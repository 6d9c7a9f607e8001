"""The gateway, as one sans-IO state machine over all of its connections.

A driver accepts sockets and pumps bytes; everything else happens here: which receiver
serves a request, what a client sees when a receiver is slow, gone or misbehaving, when
to stop reading whom.

:class:`~.core.GatewayCore` (:mod:`.core`) is the coordinator. It owns the connection table, the timers and
the wake-ups, and hands each call to the connection's unit by kind:

* :mod:`.http`: client connections, the HTTP exchange (a request becomes a
  tunnel stream; its response comes back on it), timeouts, per-address caps, access log;
* :mod:`.tunnels`: receivers' tunnels (handshake, authentication, DID parking,
  route claims, picking one for a request) on the shared :mod:`anpx_core.endpoint`;
* :mod:`.admin`: /health, /stats, /metrics;
* :mod:`.proxy`: which X-Forwarded-For to believe.

A connection of any kind is a :class:`Connection`; a stream on a tunnel belongs to a
:class:`~anpx_core.gateway.tunnels.StreamOwner`. A new kind of stream is a new unit with
both, opened through a new ``open_*`` here; nothing else in the coordinator changes.

Driver contract (:class:`anpx_core.contract.DriverCore`; the receiver core offers the same):

* ``cid = open_client(...)`` / ``open_tunnel(...)`` / ``open_admin(...)`` for each accepted socket;
* ``receive(cid, data, now)`` for bytes read (``b""`` at EOF), ``lost(cid, now)`` on a socket error;
* ``take_output(cid) -> (data, close)``: write ``data``, then call ``written(cid, now)``;
  once ``data`` is empty and ``close`` is true, close the socket and call ``closed(cid, now)``;
* read from a socket only while ``can_read(cid)``;
* after each call, fire the wake-ups named by ``pop_wakeups()`` (connection ids, and
  :class:`~anpx_core.contract.Signal` s), and reset (abort: close without flushing, even
  mid-write) the sockets named by ``pop_aborts()``;
* one timer task sleeps until ``next_deadline()`` (forever if None) or until
  ``Signal.TIMER`` is woken, then calls ``handle_timer(now)`` and ``set_wall_clock``;
* after ``begin_drain()``, ``Signal.DRAINED`` is woken once ``in_flight`` is 0;
* ``Signal.RECEIVERS`` is woken when a receiver's tunnel opens (a driver holding its public
  listener until then waits on it: :mod:`anpx_host.warmup`).
"""

from __future__ import annotations

from .core import GatewayCore, GatewaySettings

__all__ = ["GatewayCore", "GatewaySettings"]
