"""Build llama-cpp-python once and reuse the wheel everywhere (nox sessions, CI, the demo).

llama-cpp-python ships only a source archive on PyPI and compiles for 8 to 12 minutes on two
cores. This builds it once into ``$SQUIRREL_WHEELS`` (default
``~/.cache/squirrel-models/wheels``) without the multimodal library (``-DLLAVA_BUILD=OFF``,
about a quarter less CPU time) and prints the wheel's path. Later calls find it at once.

    python tools/llama_wheel.py            # prints the path of the wheel, building if needed
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

VERSION = "0.3.36"


def wheel_dir() -> Path:
    d = os.environ.get("SQUIRREL_WHEELS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "squirrel-models", "wheels")
    return Path(d)


def find_wheel() -> Path | None:
    found = sorted(wheel_dir().glob(f"llama_cpp_python-{VERSION}-*.whl"))
    return found[-1] if found else None


def ensure_wheel() -> Path:
    d = wheel_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build even when sessions run side by side
        wheel = find_wheel()
        if wheel is not None:
            return wheel
        print(f"building llama-cpp-python {VERSION} (8-12 minutes, once)...", file=sys.stderr)
        env = dict(os.environ, CMAKE_ARGS=os.environ.get("CMAKE_ARGS", "-DLLAVA_BUILD=OFF"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                        f"llama-cpp-python=={VERSION}", "-w", str(d)], check=True, env=env)
        wheel = find_wheel()
        if wheel is None:
            raise SystemExit(f"pip wheel finished but no wheel is in {d}")
        return wheel


if __name__ == "__main__":
    print(ensure_wheel())
