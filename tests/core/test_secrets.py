"""Secrets never appear in reprs, logs, errors, metrics or spans."""

from __future__ import annotations

import logging
import traceback

import pytest
from squirrel_models import AIRequest, AuthenticationError, ServerError
from squirrel_models.secrets import RedactingFilter, Secret, redact
from squirrel_models.testing import Fail

from .helpers import card, provider

pytestmark = pytest.mark.anyio
CANARY = "sk-canary-7f3a9c1e55d04b2a"


def test_secret_hides_its_value() -> None:
    s = Secret(CANARY)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", repr([s]), repr({"k": s})):
        assert CANARY not in text
    assert s.reveal() == CANARY


@pytest.mark.parametrize("name", [CANARY, "hf_AbCdEf0123456789", "sk proj 1234"])
def test_a_key_given_as_the_variable_name_is_not_echoed(monkeypatch, name) -> None:
    """People paste the key where the variable's name belongs: the error must not show it."""
    from squirrel_models.errors import ConfigError

    monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as info:
        Secret.from_env(name, field="providers.p.options.api_key_env")
    text = str(info.value) + "".join(traceback.format_exception(info.value))
    assert name not in text and info.value.field == "providers.p.options.api_key_env"


def test_a_missing_variable_is_named(monkeypatch) -> None:
    from squirrel_models.errors import ConfigError

    monkeypatch.delenv("SQUIRREL_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable SQUIRREL_TEST_NO_SUCH_KEY is not set"):
        Secret.from_env("SQUIRREL_TEST_NO_SUCH_KEY", field="api_key_env")


def test_redact_scrubs_known_secrets() -> None:
    Secret(CANARY)
    assert redact(f"Authorization: Bearer {CANARY}") == "Authorization: Bearer ***"


def test_log_records_are_scrubbed(caplog) -> None:
    Secret(CANARY)
    logger = logging.getLogger("squirrel_models.test")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.DEBUG, "squirrel_models.test"):
        logger.debug("calling with key %s", CANARY)
        try:
            raise ValueError(f"upstream echoed {CANARY}")
        except ValueError:
            logger.exception("failed")
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert CANARY not in text
    assert "***" in text


async def test_no_secret_in_errors_metrics_or_spans(squirrel_manager, squirrel_metrics, caplog) -> None:
    """A provider failing with every error path: the canary appears nowhere."""
    key = Secret(CANARY)
    p = provider("p", card("a"), card("b"))
    p.script("a", Fail(AuthenticationError("invalid key ***", status_code=401)))
    p.script("b", Fail(ServerError("boom", status_code=500)), Fail(ServerError("boom", status_code=500)))
    seen: list[str] = [repr(key)]
    with caplog.at_level(logging.DEBUG):
        async with squirrel_manager({"fallback": {"options": {"retry": {"base_delay": 0.001}}}}) as mm:
            for c in p.models:
                mm.register_model(c, p)
            try:
                await mm.complete(AIRequest.from_prompt("hi"))
            except Exception as exc:
                seen.append(str(exc))
                seen.append("".join(traceback.format_exception(exc)))
                seen.append(repr(exc))
            seen.append(repr(mm.providers) + repr(mm.config))
    seen.append(caplog.text)
    seen.append(squirrel_metrics.everything())
    blob = "\n".join(seen)
    assert CANARY not in blob
    assert "AuthenticationError" in blob
