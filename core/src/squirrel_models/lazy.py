"""Lazy exports (PEP 562): a package's public names imported on first use, so importing the
package (as loading a plugin's entry point does) pays for none of its submodules.

In a package's ``__init__``::

    _EXPORTS = {"Thing": "things", "helper": "things"}  # name -> submodule defining it
    __all__ = ["Thing", "helper"]  # a literal: type checkers read no computed __all__
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

    if TYPE_CHECKING:  # what type checkers and IDEs read
        from .things import Thing, helper
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of the package named ``package`` (pass its
    ``__name__``, while it is being imported), whose public names ``exports`` maps to the
    submodule that defines each (``"budget"`` for ``package.budget``). A name is imported on
    first use and then kept in the package's namespace; any other name raises
    AttributeError. ``__dir__`` lists the package's ``__all__``."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return list(namespace.get("__all__", exports))

    return __getattr__, __dir__
