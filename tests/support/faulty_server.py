"""The misbehaving OpenAI-compatible server: it lives in the core's test support for plugin
authors (:mod:`squirrel_models.testing.fake_server`); the project's tests import it from here."""

from __future__ import annotations

from squirrel_models.testing.fake_server import (
    ANSWER,
    LEAK_FORMS,
    LEAK_PLACES,
    PROMPT_TOKENS,
    TOOL_ARGUMENTS,
    TOOL_CALL_ID,
    FakeServer,
    FaultyServer,
    faulty_fixtures,
    faulty_server,
    leak_behaviours,
    leak_form,
)

__all__ = ["ANSWER", "LEAK_FORMS", "LEAK_PLACES", "PROMPT_TOKENS", "TOOL_ARGUMENTS", "TOOL_CALL_ID", "FakeServer",
           "FaultyServer", "faulty_fixtures", "faulty_server", "leak_behaviours", "leak_form"]
