"""httpx and httpcore read bodies through nested async generators that nobody acloses when a
stream is abandoned early (httpx issues #3686, PR #3777); trio warns when it collects them.
Providers close their own generators with ``aclosing()``; httpx's are finalized by trio
regardless, so that one warning is not an error in suites that drive httpx::

    def pytest_collection_modifyitems(items):
        ignore_unclosed_httpx_generators(items, __file__)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from squirrel_models.testing.conformance import HTTPX_UNCLOSED

__all__ = ["ignore_unclosed_httpx_generators"]

#: httpx and httpcore, and huggingface_hub 2's forks of them (httpx2, httpcore2).
MESSAGE = HTTPX_UNCLOSED


def ignore_unclosed_httpx_generators(items: list[pytest.Item], conftest: str) -> None:
    """Ignore that warning on the items collected below the folder of ``conftest``."""
    here = str(Path(conftest).parent)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.filterwarnings(f"ignore:{MESSAGE}:ResourceWarning"))
