"""Redis Cluster routing for the hot-path client: hash slots, per-node pipelines, MOVED and ASK.

:class:`ClusterClient` is :class:`~serving.resp.RespClient` taught slot routing: one pipelined
RespClient per node, a table of the 16384 hash slots to the node that owns each, and the two
redirections a cluster answers with (``MOVED``: the slot lives elsewhere now, update the table;
``ASK``: this one key is mid-migration, ask the other node once, preceded by ``ASKING``). Chosen
over redis-py's asyncio ``RedisCluster`` by measurement (``benchmarks/cluster_clients.md``): it
costs about what the one-node client costs per command, several times less CPU than redis-py.

A batch of commands is split by the node of each command's key and sent to every node at once,
one pipeline per node; MGET across slots is not allowed in a cluster, so reads are pipelined GETs.
The topology (CLUSTER SLOTS) is read on first use and again after a MOVED or a node that does not
answer (a failover), at most once per :data:`REFRESH_MIN_INTERVAL_S`, from any node that answers.

URL scheme (``Settings.redis_url``)::

    redis+cluster://[[user]:password@]HOST:PORT[,HOST:PORT...][?ssl_cert_reqs=...]
    rediss+cluster://...          (TLS to every node)

Several seed nodes, so that one seed being down does not stop a server from starting; a scheme of
its own rather than a ``?cluster=1`` flag on ``redis://``, so that a one-node URL can never be
routed as a cluster by accident and the two are told apart at a glance. The cluster has only
database 0.

Example::

    client = ClusterClient("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", timeout_s=0.25)
    replies = await client.execute([("GET", "hs:m:v:1:1"), ("SET", "hs:m:v:1:2", b"...")])
"""

from __future__ import annotations

import asyncio
import binascii
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from serving.breaker import Breaker
from serving.resp import Command, RespClient, RespConnectionError, RespReplyError

SLOTS = 16384
# Redirections followed for one command before giving up (a slot moving twice within a request).
MAX_REDIRECTS = 5
# The topology is re-read at most this often: a dead master makes every request to it fail, and
# each must not cost a CLUSTER SLOTS round trip.
REFRESH_MIN_INTERVAL_S = 0.1
SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# Error replies that mean "the cluster cannot serve this now" (a failover in progress, a node
# loading its data): an outage of that slot, not a refusal of the command.
_UNAVAILABLE_REPLIES = ("CLUSTERDOWN", "LOADING", "TRYAGAIN", "MASTERDOWN")

Address = tuple[str, int]


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.split("://", 1)[0] in SCHEMES


def key_slot(key: str | bytes) -> int:
    """The hash slot of ``key``: CRC16 (XMODEM) of the key, or of its ``{hash tag}`` if it has a
    non-empty one, mod 16384 (``binascii.crc_hqx`` with seed 0 is that CRC, in C)."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % SLOTS


class ClusterUnavailable(RespConnectionError):
    """No node serves a slot now, or the owner answered that it cannot (``CLUSTERDOWN``...)."""


class ClusterURL:
    """The parts of a cluster URL: the seed nodes and how to reach any node."""

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        if scheme not in SCHEMES:
            raise ValueError(f"not a cluster URL (redis+cluster://HOST:PORT,...): {url!r}")
        parts = urlsplit(f"{SCHEMES[scheme]}://{rest}")
        auth, _, hosts = parts.netloc.rpartition("@")
        if parts.path not in ("", "/", "/0"):
            raise ValueError("a Redis Cluster has only database 0")
        self.seeds: list[Address] = [self._address(h) for h in hosts.split(",") if h]
        if not self.seeds:
            raise ValueError(f"a cluster URL names at least one HOST:PORT: {url!r}")
        self._prefix = f"{SCHEMES[scheme]}://{auth + '@' if auth else ''}"
        self._query = f"?{parts.query}" if parts.query else ""

    @staticmethod
    def _address(hostport: str) -> Address:
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a cluster seed is HOST:PORT, got {hostport!r}")
        return host, int(port)

    def node_url(self, address: Address) -> str:
        """The one-node URL of ``address`` with this URL's credentials and TLS options."""
        return f"{self._prefix}{address[0]}:{address[1]}/0{self._query}"


class ClusterClient:
    """Pipelined commands routed by hash slot; the interface of :class:`RespClient`
    (``execute``), every command's key at position 1."""

    def __init__(self, url: str, timeout_s: float, node_breaker: Callable[[], Breaker] | None = None) -> None:
        self.url = ClusterURL(url)
        self.timeout_s = timeout_s
        self._nodes: dict[Address, RespClient] = {}
        # One breaker per node: a master that is down (a failover under way) fails fast for the
        # keys it owns while requests for the other masters' keys go on as usual.
        self._new_breaker = node_breaker
        self.breakers: dict[Address, Breaker] = {}
        self._slots: list[Address | None] = [None] * SLOTS
        self._masters: list[Address] = []  # derived from _slots whenever it changes
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = -REFRESH_MIN_INTERVAL_S
        self._background: set[asyncio.Future[None]] = set()
        self.redirects = 0  # MOVED and ASK replies followed (for tests and stats)
        self.refreshes = 0

    # ----- nodes and topology ----------------------------------------------------------------

    def node(self, address: Address) -> RespClient:
        """The (lazily connected) client of one node."""
        client = self._nodes.get(address)
        if client is None:
            client = self._nodes[address] = RespClient(self.url.node_url(address), self.timeout_s)
        return client

    def _breaker(self, address: Address) -> Breaker | None:
        if self._new_breaker is None:
            return None
        breaker = self.breakers.get(address)
        if breaker is None:
            breaker = self.breakers[address] = self._new_breaker()
        return breaker

    def masters(self) -> list[Address]:
        """Nodes that own slots in the current table."""
        return self._masters

    async def refresh(self, force: bool = False) -> None:
        """Re-read the slot table (CLUSTER SLOTS) from the first node that answers. Concurrent
        callers share one refresh; unforced ones skip it if the last was under
        :data:`REFRESH_MIN_INTERVAL_S` ago."""
        if self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)
            return
        if not force and time.monotonic() - self._refreshed_at < REFRESH_MIN_INTERVAL_S:
            return
        self._refreshed_at = time.monotonic()
        self._refreshing = asyncio.ensure_future(self._read_topology())
        await asyncio.shield(self._refreshing)

    async def _read_topology(self) -> None:
        # Masters we know first (they are the likeliest to answer), then the seeds.
        candidates = list(dict.fromkeys([*self.masters(), *self.url.seeds]))
        last_error: Exception | None = None
        for address in candidates:
            try:
                [reply] = await self.node(address).execute([("CLUSTER", "SLOTS")])
            except (RespConnectionError, RespReplyError) as exc:
                last_error = exc
                continue
            self._apply_slots(reply, address)
            self.refreshes += 1
            return
        raise ClusterUnavailable(f"no cluster node answered CLUSTER SLOTS: {last_error}")

    def _apply_slots(self, reply: list[Any], asked: Address) -> None:
        table: list[Address | None] = [None] * SLOTS
        for first, last, master, *_replicas in reply:
            host = master[0].decode() if master[0] else asked[0]  # an empty host: the one asked
            table[first : last + 1] = [(host, int(master[1]))] * (last - first + 1)
        self._set_table(table)

    def _set_table(self, table: list[Address | None]) -> None:
        self._slots = table
        self._masters = sorted({address for address in table if address is not None})

    # ----- routed execution -----------------------------------------------------------------

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` (one pipeline per node, all nodes at once) and return the replies in
        order, following MOVED and ASK. Raises :class:`RespReplyError` for the first other error
        reply and :class:`RespConnectionError` (:class:`ClusterUnavailable`) on an outage."""
        if not self._masters:
            await self.refresh(force=True)
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        asking: dict[int, Address] = {}
        for _ in range(MAX_REDIRECTS + 1):
            groups = self._group(commands, pending, asking)
            pending, asking = await self._send_groups(commands, groups, asking, replies)
            if not pending:
                return replies
        raise ClusterUnavailable(f"still redirected after {MAX_REDIRECTS} redirections (a slot keeps moving)")

    def _group(self, commands: Sequence[Command], pending: list[int], asking: dict[int, Address]) -> dict[Address, list[int]]:
        groups: dict[Address, list[int]] = {}
        slots = self._slots
        for i in pending:
            address = asking.get(i) or slots[key_slot(commands[i][1])]
            if address is None:
                self._refresh_soon()
                raise ClusterUnavailable(f"no node serves slot {key_slot(commands[i][1])} now")
            groups.setdefault(address, []).append(i)
        return groups

    async def _send_groups(self, commands: Sequence[Command], groups: dict[Address, list[int]], asking: dict[int, Address],
                           replies: list[Any]) -> tuple[list[int], dict[int, Address]]:
        """One pipeline per node; fills ``replies``; returns what was redirected, and where ASK sent it."""
        if len(groups) == 1:  # the common case (one key, or a batch on one node): no gather
            [(address, indexes)] = groups.items()
            results = [await self._send_node(address, [commands[i] for i in indexes], [i in asking for i in indexes])]
        else:
            results = await asyncio.gather(*(self._send_node(a, [commands[i] for i in idx], [i in asking for i in idx])
                                             for a, idx in groups.items()), return_exceptions=True)
        redirected: list[int] = []
        ask_next: dict[int, Address] = {}
        failure: BaseException | None = None
        for indexes, result in zip(groups.values(), results):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            for i, reply in zip(indexes, result):
                if isinstance(reply, RespReplyError):
                    self._redirect(i, reply, redirected, ask_next)
                else:
                    replies[i] = reply
        if failure is not None:
            raise failure
        return redirected, ask_next

    async def _send_node(self, address: Address, commands: list[Command], asking: list[bool]) -> list[Any]:
        """Commands to one node; those flagged ``asking`` are preceded by ASKING (whose OK replies
        are dropped). A node that cannot be reached makes the topology be re-read."""
        wire: list[Command] = []
        for command, ask in zip(commands, asking):
            if ask:
                wire.append(("ASKING",))
            wire.append(command)
        breaker = self._breaker(address)
        if breaker is not None and not breaker.allow():
            raise ClusterUnavailable(f"cluster node {address[0]}:{address[1]} is failing (its breaker is open)")
        try:
            replies = await self.node(address).execute_each(wire)
        except RespConnectionError:
            if breaker is not None:
                breaker.failure()
            self._refresh_soon()  # a failover may have moved its slots
            raise
        if breaker is not None:
            breaker.success()
        if len(wire) == len(commands):
            return replies
        ours: list[Any] = []
        it = iter(replies)
        for ask in asking:
            if ask:
                next(it)  # ASKING's own OK
            ours.append(next(it))
        return ours

    def _redirect(self, i: int, reply: RespReplyError, redirected: list[int], ask_next: dict[int, Address]) -> None:
        """Queue command ``i`` again after a MOVED or ASK; raise for any other error reply."""
        text = str(reply).removeprefix("Redis replied with an error: ")
        kind, _, rest = text.partition(" ")
        if kind in ("MOVED", "ASK"):
            slot, _, target = rest.partition(" ")
            host, _, port = target.rpartition(":")
            address = (host or self.url.seeds[0][0], int(port))
            self.redirects += 1
            if kind == "MOVED":
                table = list(self._slots)
                table[int(slot)] = address  # this slot now; the rest of the table on refresh
                self._set_table(table)
                self._refresh_soon()
            else:
                ask_next[i] = address
            redirected.append(i)
            return
        if kind in _UNAVAILABLE_REPLIES:
            self._refresh_soon()
            raise ClusterUnavailable(f"cluster cannot serve now: {text}")
        raise reply

    def _refresh_soon(self) -> None:
        """Re-read the topology in the background (the request at hand does not wait for it)."""
        task = asyncio.ensure_future(self._refresh_quietly())
        self._background.add(task)  # a reference, or the task may be collected before it runs
        task.add_done_callback(self._background.discard)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except RespConnectionError:
            pass  # every node down: the next request fails on its own and tries again

    async def execute_on(self, address: Address, commands: Sequence[Command]) -> list[Any]:
        """Commands to one named node, unrouted (SCAN, INFO, PING: per-node commands)."""
        return await self.node(address).execute(commands)

    async def close(self) -> None:
        """Close every node's connection."""
        for task in self._background:
            task.cancel()
        for client in self._nodes.values():
            await client.close()
        self._nodes.clear()
