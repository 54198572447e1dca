"""Test support for squirrel-models and its plugin authors.

- :class:`ScriptedProvider` and its steps (:class:`Reply`, :class:`Fail`, :class:`Hang`,
  :class:`StreamReply`, :class:`ToolReply`): a provider test double that plays scripts.
- :mod:`squirrel_models.testing.conformance`: suites a provider or budget backend runs on itself.
- :mod:`squirrel_models.testing.pytest_plugin`: fixtures (loaded automatically by pytest).
"""

from __future__ import annotations

from .provider import Fail, Hang, Reply, ScriptedPlugin, ScriptedProvider, StreamReply, ToolReply

__all__ = ["Fail", "Hang", "Reply", "ScriptedPlugin", "ScriptedProvider", "StreamReply", "ToolReply"]
