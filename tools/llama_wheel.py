"""Build llama-cpp-python once and reuse the wheel everywhere (nox sessions, CI, the demo).

llama-cpp-python ships only a source archive on PyPI and compiles for 8 to 12 minutes on two
cores. This builds it once into a folder of ``$SQUIRREL_WHEELS`` (default
``~/.cache/squirrel-models/wheels``) named after the build flags, and prints the wheel's path.
Later calls find it at once.

The flags (``CMAKE_ARGS`` overrides them):

- ``-DLLAVA_BUILD=OFF``: no multimodal library, about a quarter less CPU time.
- A portable x86-64 build (AVX2, FMA, F16C) instead of ggml's default ``-march=native``. On a
  CPU with AMX (Sapphire Rapids and later), the native build runs ggml's AMX matrix kernels,
  and with llama-cpp-python 0.3.36 these crash the process (SIGSEGV in
  ``ggml_backend_amx_mul_mat``) on the first prompt of more than one token of a Q4_1 model
  such as SmolLM2: measured on this project's CI machine. A portable wheel also works on
  every machine that shares the cache.

The folder's name carries a hash of the flags, so a wheel built with other flags (an older
native build, say) is never picked up, and pip's own wheel cache (whose key ignores
``CMAKE_ARGS``) is bypassed.

    python tools/llama_wheel.py            # prints the path of the wheel, building if needed
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

VERSION = "0.3.36"
#: see the module docstring: why not native, and why no AMX
PORTABLE = ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
            "-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF "
            "-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")


def cmake_args() -> str:
    return os.environ.get("CMAKE_ARGS", PORTABLE)


def wheel_dir() -> Path:
    d = os.environ.get("SQUIRREL_WHEELS") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "squirrel-models", "wheels")
    flags = hashlib.sha256(cmake_args().encode()).hexdigest()[:12]
    return Path(d) / f"llama-cpp-python-{VERSION}-{flags}"


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
        env = dict(os.environ, CMAKE_ARGS=cmake_args())
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--no-cache-dir",
                        f"llama-cpp-python=={VERSION}", "-w", str(d)], check=True, env=env)
        wheel = find_wheel()
        if wheel is None:
            raise SystemExit(f"pip wheel finished but no wheel is in {d}")
        return wheel


if __name__ == "__main__":
    print(ensure_wheel())
