"""A real local Redis Cluster from the bundled redis-server: masters, replicas, failover, slot moves.

Every node is an :class:`~loadtests.harness.redis_server.EmbeddedRedis` in cluster mode (loopback,
no persistence, its own ``nodes.conf`` in its own directory). The cluster is formed with plain
cluster commands (ADDSLOTS, MEET, REPLICATE) rather than ``redis-cli --cluster create``, so only the
server binary is needed. ``cluster-node-timeout`` is short (1 s by default), so a killed master is
replaced by its replica within a few seconds; ``cluster-require-full-coverage no`` keeps the other
masters answering while one slot range has no master (the failover window).

Its URL uses the cluster scheme of :mod:`serving.cluster`: ``redis+cluster://HOST:PORT,HOST:PORT``.

Example::

    with RedisCluster(masters=3, replicas=1) as cluster:
        print(cluster.url)                    # redis+cluster://:PASSWORD@127.0.0.1:P1,127.0.0.1:P2,...
        victim = cluster.kill_master_of(slot=0)
        cluster.wait_until_served(slot=0)     # a replica took over
"""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import redis

from loadtests.harness.redis_server import LOOPBACK, EmbeddedRedis, RedisServerError, free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 1000
FORM_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 30.0
MIGRATE_BATCH = 100
# A cluster node also listens on its port + 10000 (the cluster bus), so both must be free.
BUS_OFFSET = 10000


def free_node_port() -> int:
    """A loopback port that is free, as is its cluster-bus port (port + 10000, below 65536)."""
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port + BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RedisServerError("no free pair of ports (port and port + 10000) for a cluster node")


@dataclass(frozen=True)
class NodeInfo:
    """One line of CLUSTER NODES: who a node is and which slots it serves."""

    node_id: str
    port: int
    master: bool
    failed: bool
    slots: tuple[tuple[int, int], ...]

    def serves(self, slot: int) -> bool:
        """Whether this node owns ``slot``."""
        return any(first <= slot <= last for first, last in self.slots)


def _parse_nodes(text: str) -> list[NodeInfo]:
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        flags = fields[2].split(",")
        ranges = []
        for part in fields[8:]:
            if part.startswith("["):
                continue  # a slot being migrated or imported: not owned by this line's node yet
            first, _, last = part.partition("-")
            ranges.append((int(first), int(last or first)))
        nodes.append(NodeInfo(fields[0], int(fields[1].split("@")[0].rsplit(":", 1)[1]), "master" in flags,
                              "fail" in flags or "fail?" in flags, tuple(ranges)))
    return nodes


class RedisCluster:
    """``masters`` masters, each with ``replicas`` replicas, on free loopback ports."""

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replica count")
        self.master_count = masters
        self.replica_count = replicas
        # One password for every node: replicas authenticate to their master with it (masterauth).
        self.password = secrets.token_urlsafe(24)
        config = ["cluster-enabled yes", "cluster-config-file nodes.conf", f"cluster-node-timeout {node_timeout_ms}",
                  "cluster-require-full-coverage no", f'masterauth "{self.password}"']
        self.nodes = [EmbeddedRedis(password=self.password, pick_port=free_node_port, extra_config=config,
                                    keep_commands=("MIGRATE",)) for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        """The cluster URL, every node a seed (``redis+cluster://:PASSWORD@127.0.0.1:P1,...``): a
        secret, for clients only; :attr:`addresses` for logs."""
        return f"redis+cluster://:{self.password}@{self.addresses}"

    @property
    def addresses(self) -> str:
        """``127.0.0.1:P1,127.0.0.1:P2,...``, without the password."""
        return ",".join(f"{LOOPBACK}:{node.port}" for node in self.nodes)

    def admin(self, node: EmbeddedRedis) -> redis.Redis:
        """A plain (non-cluster) client of one node, for admin commands."""
        return redis.Redis(host=LOOPBACK, port=node.port, password=self.password, socket_timeout=5.0, decode_responses=True)

    # ----- forming ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node, assign slots evenly to the masters, join and pair them, and wait until
        every node reports ``cluster_state:ok`` with all slots covered. On failure every node is
        stopped again before the error is raised."""
        try:
            self._form()
        except BaseException:
            self.close()
            raise
        return self

    def _form(self) -> None:
        for node in self.nodes:
            node.start()
        masters = self.nodes[: self.master_count]
        for i, node in enumerate(masters):
            first, last = i * SLOTS // len(masters), (i + 1) * SLOTS // len(masters) - 1
            self.admin(node).execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        for node in self.nodes[1:]:
            self.admin(node).execute_command("CLUSTER", "MEET", LOOPBACK, self.nodes[0].port)
        self._wait(lambda: all(len(self.topology(n)) == len(self.nodes) for n in self.nodes), "nodes to meet")
        for i, node in enumerate(self.nodes[self.master_count:]):
            master_id = self.node_id(masters[i % self.master_count])
            self._wait(lambda: self._replicate(node, master_id), "a replica to attach")
        self._wait(self._healthy, "cluster_state:ok on every node")

    def _replicate(self, node: EmbeddedRedis, master_id: str) -> bool:
        try:
            self.admin(node).execute_command("CLUSTER", "REPLICATE", master_id)
            return True
        except redis.ResponseError:  # the node has not heard of the master yet
            return False

    def _healthy(self) -> bool:
        for node in self.live_nodes():
            info = self.admin(node).execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" not in info or f"cluster_slots_ok:{SLOTS}" not in info:
                return False
        return True

    @staticmethod
    def _wait(done: object, what: str, timeout_s: float = FORM_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if done():  # type: ignore[operator]
                    return
            except (redis.RedisError, OSError, LookupError):
                pass  # a node still starting or just killed, a slot without a master yet: ask again
            time.sleep(0.05)
        raise RedisServerError(f"redis cluster: timed out after {timeout_s:.0f}s waiting for {what}")

    # ----- looking --------------------------------------------------------------------------

    def live_nodes(self) -> list[EmbeddedRedis]:
        """Nodes whose process runs."""
        return [node for node in self.nodes if node.pid is not None]

    def topology(self, node: EmbeddedRedis | None = None) -> list[NodeInfo]:
        """CLUSTER NODES as ``node`` (default: the first live node) sees it."""
        asked = node or self.live_nodes()[0]
        return _parse_nodes(self.admin(asked).execute_command("CLUSTER", "NODES"))

    def node_id(self, node: EmbeddedRedis) -> str:
        """The cluster id of ``node``."""
        return str(self.admin(node).execute_command("CLUSTER", "MYID"))

    def by_port(self, port: int) -> EmbeddedRedis:
        """The node listening on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def master_of(self, slot: int) -> EmbeddedRedis:
        """The live master that owns ``slot`` now."""
        for info in self.topology():
            if info.master and not info.failed and info.serves(slot):
                return self.by_port(info.port)
        raise LookupError(f"no live master serves slot {slot}")

    # ----- faults ---------------------------------------------------------------------------

    def kill_master_of(self, slot: int) -> EmbeddedRedis:
        """SIGKILL the master of ``slot`` (a crash); its replica takes over after the node timeout."""
        victim = self.master_of(slot)
        victim.kill()
        return victim

    def wait_until_served(self, slot: int, timeout_s: float = FAILOVER_TIMEOUT_S) -> EmbeddedRedis:
        """Wait until a live master serves ``slot`` and the cluster is healthy again; returns it."""
        self._wait(lambda: self.master_of(slot).pid is not None and self._healthy(), f"a master for slot {slot}", timeout_s)
        return self.master_of(slot)

    def move_slot(self, slot: int, target: EmbeddedRedis, pause_s: float = 0.0) -> int:
        """Move ``slot`` and its keys to master ``target`` the way resharding does (IMPORTING,
        MIGRATING, MIGRATE in batches, SETSLOT NODE everywhere); while it runs, clients get ASK for
        keys already moved, then MOVED. ``pause_s`` waits between batches (a longer ASK window for
        tests). Returns how many keys moved."""
        source = self.master_of(slot)
        if source is target:
            return 0
        src, dst = self.admin(source), self.admin(target)
        src_id, dst_id = self.node_id(source), self.node_id(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH):
            src.execute_command("MIGRATE", LOOPBACK, target.port, "", 0, 5000, "AUTH", self.password, "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        others = [self.by_port(i.port) for i in self.topology() if i.master and not i.failed and i.port not in (source.port, target.port)]
        for node in (target, source, *others):  # masters only; replicas learn it through the bus
            self.admin(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    # ----- lifecycle ------------------------------------------------------------------------

    def restart(self, node: EmbeddedRedis) -> None:
        """Start a killed node again; its nodes.conf makes it rejoin (as a replica if replaced)."""
        node.start()

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
