"""A throwaway Redis server on 127.0.0.1 for the tests and the benchmark: ``redis-server`` (or
``valkey-server``) from the machine's packages, in a temporary folder, with no persistence and
a password (so the tests can check that it never leaks)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import attrs

from ..support.ports import free_port

PASSWORD = "Redis-canary-S3cret-pw"  # a canary of the secret scanner (see conftest.py)


def find_server() -> str | None:
    """The path of ``redis-server`` or ``valkey-server``, if installed."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


@attrs.define
class RedisServer:
    """One server in a temporary folder: ``start()``, ``kill()`` (SIGKILL), ``stop()``,
    ``url``, ``remove()``. It keeps its port across restarts.

    redis-server cannot bind port 0 and say which port it took, so the port is picked
    beforehand (:func:`free_port`), and another process can take it before the server binds
    it: the first start then moves to another free port (a restart keeps its URL)."""

    binary: str
    root: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="squirrel-redis-")))
    port: int = attrs.field(factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: more ``redis-server`` arguments (``--appendonly yes``, say)
    extra: tuple[str, ...] = ()
    started: bool = False

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        for _ in range(5):
            if self._start(timeout):
                self.started = True
                return
            self.port = free_port()  # taken since it was picked: not yet anyone's URL
        raise RuntimeError(f"redis-server found no free port: {(self.root / 'log').read_text()[-500:]}")

    def _start(self, timeout: float) -> bool:
        """Start on ``port``: True once it answers, False if the port was taken before the
        first start bound it."""
        log = open(self.root / "log", "ab")  # noqa: SIM115 (the server's, closed with it)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
             "--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--daemonize", "no",
             "--protected-mode", "yes", "--maxclients", "1000", "--logfile", "", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                said = (self.root / "log").read_text()
                if not self.started and f"{self.port}: bind: Address already in use" in said:
                    (self.root / "log").write_text("")
                    return False
                raise RuntimeError(f"redis-server exited: {said[-500:]}")
            if self._ping():
                return True
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer in time")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(f"AUTH {PASSWORD}\r\nPING\r\n".encode())
                data = b""
                while data.count(b"\r\n") < 2:
                    chunk = s.recv(100)
                    if not chunk:
                        return False
                    data += chunk
                return b"+PONG" in data
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers (a hung server)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def remove(self) -> None:
        self.resume()
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
