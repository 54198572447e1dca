"""A throwaway PostgreSQL server on 127.0.0.1 for the tests and the benchmark.

``initdb`` refuses to run as root, so when we are root the server's files live in a folder
owned by the ``postgres`` OS user and its programs run through ``runuser -u postgres --``.
The server requires a password over TCP (scram-sha-256), so the tests can check that it never
leaks.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import attrs

from ..support.ports import free_port

PASSWORD = "Pg-canary-S3cret-pw"  # a canary of the secret scanner (see conftest.py)
USER = "squirrel"


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb and pg_ctl, else PATH's."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
                    reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@attrs.define
class PgServer:
    """One server in a temporary folder: ``start()``, ``stop()``, ``url``, ``remove()``.

    PostgreSQL cannot bind port 0 and say which port it took, so the port is picked
    beforehand (:func:`free_port`), and another process can take it before the server binds
    it: the first start then moves to another free port (a restart keeps its URL)."""

    bindir: Path
    root: Path
    port: int = attrs.field(factory=free_port)
    extra: tuple[str, ...] = ("-c", "fsync=off", "-c", "synchronous_commit=off")
    started: bool = False

    @classmethod
    def create(cls, bindir: Path, *extra: str) -> PgServer:
        root = Path(tempfile.mkdtemp(prefix="squirrel-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        pwfile = root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(root / "data"), "-U", USER,
                                  "--auth-local=trust", "--auth-host=scram-sha-256",
                                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=60)
        server = cls(bindir, root)
        if extra:
            server.extra = server.extra + extra
        return server

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        log = self.root / "log"
        for _ in range(5):
            before = log.stat().st_size if log.exists() else 0
            try:
                self._start()
            except subprocess.CalledProcessError:
                said = log.read_bytes()[before:].decode(errors="replace") if log.exists() else ""
                if self.started or "Address already in use" not in said:
                    raise
                self.port = free_port()  # taken since it was picked: not yet anyone's URL
                continue
            self.started = True
            return
        raise RuntimeError("PostgreSQL found no free port")

    def _start(self) -> None:
        opts = " ".join([f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1",
                         "-c max_connections=200", *self.extra])
        subprocess.run(_as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"),
                                  "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "30",
                                  "start"]), check=True, capture_output=True, timeout=60)

    def pids(self) -> list[int]:
        """The postmaster and every process it started (its backends, checkpointer, ...)."""
        try:
            main = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # the command name (2nd field) is in parentheses and may hold spaces
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == main:
                children.append(int(stat.parent.name))
        return [main, *children]

    def backends(self) -> list[int]:
        """The server's client backends (one per open connection), read from the kernel at
        once (no scan of /proc): the postmaster's children whose title names a client's host
        and port (``postgres: squirrel postgres 127.0.0.1(40312) idle``)."""
        try:
            main = (self.root / "data" / "postmaster.pid").read_text().split()[0]
            children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
        except (OSError, IndexError):
            return []
        found = []
        for pid in children:
            with contextlib.suppress(OSError):
                if b"(" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
        return found

    def pause(self) -> None:
        """SIGSTOP the whole server: the kernel still accepts connections and takes what is
        sent on the open ones, nothing answers, no statement_timeout fires (a hung host)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"),
                                  "-m", mode, "-w", "stop"]), capture_output=True, timeout=60)

    def remove(self) -> None:
        self.resume()
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
