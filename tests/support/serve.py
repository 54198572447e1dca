"""``squirrel serve`` as a real process for the tests (the gateway's and the integration's):
started on the port its configuration names, 0 for one the kernel picks, and found from the
line the command prints once it listens."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs
import httpx

__all__ = ["ANNOUNCED", "Served", "squirrel_serve"]


@attrs.define
class Served:
    """A ``squirrel serve`` process: its base URL; once stopped, its output and return code."""

    base: str
    proc: subprocess.Popen[str]
    out: str = ""

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


#: The line ``squirrel serve`` prints once it listens, with the port it was given.
ANNOUNCED = re.compile(r"squirrel serve: (http://[^/\s]+)/v1 ")


@contextlib.contextmanager
def squirrel_serve(config: Path, env: Mapping[str, str], *args: str, timeout: float = 60,
                   stop: signal.Signals = signal.SIGINT) -> Iterator[Served]:
    """``squirrel serve [args] --config config`` as a real process (stdout and stderr
    together, in the configuration's folder), waited for (``timeout`` seconds at most) until
    it says where it listens and ``/health`` answers there; stopped with ``stop`` (SIGINT:
    Ctrl-C) on exit, when ``out`` and ``proc.returncode`` are set.

    Give the configuration ``port = 0``: the kernel picks a free port as the server binds
    it. A port picked beforehand (``free_port()``) stayed free only until the server bound it
    seconds later, its imports done, and another process on a busy machine could take it."""
    squirrel = Path(sys.executable).parent / "squirrel"
    proc = subprocess.Popen([str(squirrel), "serve", *args, "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(env), cwd=config.parent)
    lines: list[str] = []
    found: list[str] = []
    announced = threading.Event()

    def read() -> None:  # the whole output, as it comes (a full pipe would block the server)
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not found and (m := ANNOUNCED.match(line)):
                found.append(m[1])
                announced.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    served = Served("", proc)
    try:
        end = time.monotonic() + timeout
        while not announced.wait(0.1):
            assert proc.poll() is None and time.monotonic() < end, \
                f"squirrel serve did not start: {''.join(lines)[-2000:]}"
        served.base = found[0]
        while True:
            assert proc.poll() is None and time.monotonic() < end, "squirrel serve does not answer"
            try:
                httpx.get(served.base + "/health", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield served
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=60)
        finally:
            reader.join(60)
            if proc.stdout is not None and not reader.is_alive():
                proc.stdout.close()
            served.out = "".join(lines)
