"""Secrets never appear in reprs, logs, errors, metrics or spans."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest
from squirrel_models import AIRequest, AuthenticationError, ServerError, SquirrelError
from squirrel_models.secrets import RedactingFilter, Secret, redact, redact_recurring
from squirrel_models.testing import Fail

from ..support import secret_scanner
from ..support.canary import texts_of
from .helpers import card, provider

pytestmark = pytest.mark.anyio
CANARY = secret_scanner.canary("sk-core-7f3a9c1e55d04b2a")


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


def test_a_remembered_redaction_masks_a_secret_registered_after_it() -> None:
    # A text that recurs is searched once; a secret registered later must still be masked
    # in it (a model id holding what turns out to be a key), not the earlier answer reused.
    late = "zq-late-6b1d0e9f27a84c3e"  # not shaped like any known key: only registering masks it
    text = f"model {late}"
    assert redact_recurring(text) == text
    Secret(late)
    assert redact_recurring(text) == "model ***"
    assert redact_recurring(text) == redact(text)


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


# --- the one redaction point: fragments, escaped forms, chains, logs, labels, output --------

KEY = secret_scanner.canary("sk-frag-4b8e2d6f0a1c3e5d7f9b+/=")
_KEY_SECRET = Secret(KEY)


def _no_fragment(text: str) -> None:
    """No run of 8 characters of KEY (raw) shows in ``text``."""
    assert not any(KEY[i:i + 8] in text for i in range(len(KEY) - 7)), text


_SHOWN = {"whole": KEY, "minus-last-two": KEY[:-2], "minus-last": KEY[:-1], "minus-first": KEY[1:],
          "first-8": KEY[:8], "last-8": KEY[-8:], "middle-12": KEY[5:17], "middle-20": KEY[10:30],
          "newline": KEY + "\n", "bearer": f"Bearer {KEY}", "quoted": f"'{KEY}'", "inner": KEY[3:-3]}


@pytest.mark.parametrize("shown", list(_SHOWN.values()), ids=list(_SHOWN))
def test_whole_keys_and_fragments_of_eight_or_more_are_masked(shown: str) -> None:
    text = redact(f"upstream said: {shown} (end)")
    _no_fragment(text)
    assert text.startswith("upstream said: ") and text.endswith(" (end)") and "***" in text


def test_fragments_shorter_than_eight_are_left() -> None:
    """The rule: runs of 8 or more characters of a key; shorter ones are ordinary text."""
    assert redact(f"id {KEY[:7]} and {KEY[-7:]}") == f"id {KEY[:7]} and {KEY[-7:]}"
    assert redact("a perfectly ordinary sentence about sk-canaries") == \
        "a perfectly ordinary sentence about sk-canaries"


def _escaped_forms(key: str) -> list[str]:
    import base64
    import json
    from urllib.parse import quote, quote_plus

    basic = [base64.b64encode(f"{u}:{key}".encode()).decode() for u in ("", "u", "us", "user")]
    return [json.dumps({"k": key}), json.dumps(key + "\n"), repr(key + "\n"), repr(repr(key + "\r\n")),
            quote(key, safe=""), quote(key, safe="").lower(), quote_plus(f"a b {key}"),
            f"https://h/?k={quote(key)}", *basic, *(b.replace("+", "-").replace("/", "_") for b in basic),
            key.encode("unicode_escape").decode(), json.dumps(key)[1:-3]]


@pytest.mark.parametrize("form", _escaped_forms(KEY), ids=[f"form{i}" for i in range(len(_escaped_forms(KEY)))])
def test_escaped_forms_are_masked(form: str) -> None:
    text = redact(f"<<{form}>>")
    assert secret_scanner.find(text) == [], text
    assert form not in text


def test_a_composite_secret_is_matched_whole_not_by_fragments() -> None:
    url = "postgresql://squirrel:Pg-composite-pw-1@127.0.0.1:5432/budgets"
    Secret(url, opaque=False)
    assert redact(f"dsn {url}") == "dsn ***"
    assert redact("connection to 127.0.0.1:5432/budgets failed") == \
        "connection to 127.0.0.1:5432/budgets failed"  # host and database stay readable


_BAD = {"newline": KEY + "\n", "crlf": KEY + "\r\n", "leading-space": " " + KEY, "tab": KEY + "\t",
        "inner-space": "sk-ab cd-12345678", "del": KEY + "\x7f", "bom": "\ufeff" + KEY, "nbsp": KEY + "\u00a0",
        "non-ascii": "sk-é-0123456789"}


@pytest.mark.parametrize("value", list(_BAD.values()), ids=list(_BAD))
def test_a_key_with_whitespace_or_control_characters_is_a_config_error(monkeypatch: pytest.MonkeyPatch,
                                                                        value: str) -> None:
    from squirrel_models.errors import ConfigError

    monkeypatch.setenv("SQUIRREL_TEST_BAD_KEY", value)
    with pytest.raises(ConfigError) as info:
        Secret.from_env("SQUIRREL_TEST_BAD_KEY", field="providers[0].options.api_key_env")
    e = info.value
    assert e.field == "providers[0].options.api_key_env"
    text = str(e) + repr(e) + "".join(traceback.format_exception(e))
    assert "SQUIRREL_TEST_BAD_KEY" in text and "not shown" in text
    stripped = value.strip().replace("\x7f", "").replace("\ufeff", "")
    assert not any(stripped[i:i + 8] in text for i in range(len(stripped) - 7)), text


def test_upstream_type_and_code_fields_are_redacted() -> None:
    """``HTTP 401 (key:sk-...)``: servers echo the key in the error's type or code too."""
    from squirrel_models.errors import FallbackExhausted
    from squirrel_models.types import AttemptRecord
    from squirrel_models.upstream import error_from_status

    errors = [error_from_status(status, {}, {"error": {"message": f"bad key {KEY[:-2]}",
                                                        "type": f"key:{KEY}", "code": f"{KEY[2:]}"}})
              for status in (400, 401, 403, 404, 422, 429, 500, 503)]
    errors.append(error_from_status(400, {}, {"error": f"key={KEY}", "error_type": KEY}))
    records = [AttemptRecord(number=i + 1, model_id=f"p/m{i}", provider="p", outcome="error", error=e)
               for i, e in enumerate(errors)]
    for e in [*errors, FallbackExhausted(records, reason=f"gave up on {KEY}")]:
        for text in (str(e), repr(e), "".join(traceback.format_exception(e))):
            _no_fragment(text)


class LeakyClientError(Exception):
    """Stands in for aiohttp's ClientResponseError: its repr holds the request's headers."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.request_headers, self.note = status, headers, f"sent {headers['Authorization']}"
        super().__init__(status, f"failed with {headers['Authorization']}")

    def __repr__(self) -> str:
        return f"LeakyClientError(status={self.status}, headers={self.request_headers!r})"


def test_foreign_causes_are_replaced_by_redacted_stand_ins() -> None:
    from squirrel_models.secrets import RedactedError, sanitize

    try:
        try:
            try:
                raise ValueError(f"Illegal header value b'Bearer {KEY}\\n'")
            except ValueError:
                raise LeakyClientError(401, {"Authorization": f"Bearer {KEY}"}) from None
        except LeakyClientError as exc:
            raise ServerError("upstream failed") from exc
    except ServerError as e:
        err = sanitize(e)
    cause = err.__cause__
    assert isinstance(cause, LeakyClientError) and isinstance(cause, RedactedError)
    assert cause.status == 401 and not hasattr(cause, "request_headers")
    assert cause.note == "sent Bearer ***"
    assert isinstance(cause.__context__, ValueError)  # the hidden context too
    for text in (repr(cause), str(cause), repr(cause.__context__), "".join(traceback.format_exception(err)),
                 repr(cause.args), repr(vars(cause))):
        _no_fragment(text)
    assert "LeakyClientError" in "".join(traceback.format_exception(err))


def test_the_boundary_hands_out_a_sanitized_chain() -> None:
    """Raising the translated error sets its __context__ to the client's exception: the
    boundary sanitizes after that, so neither link holds it."""
    from squirrel_models.upstream import boundary

    def translate(exc: BaseException) -> ServerError | None:
        return ServerError(f"HTTP 500 (key:{KEY})") if isinstance(exc, LeakyClientError) else None

    with pytest.raises(ServerError) as info, boundary(translate, provider="p", model_id="p/m",
                                                      log=logging.getLogger("squirrel_models.t")):
        raise LeakyClientError(500, {"Authorization": f"Bearer {KEY}"})
    e = info.value
    assert e.__cause__ is e.__context__ and not hasattr(e.__cause__, "request_headers")
    for text in (str(e), repr(e), repr(e.__cause__), repr(e.__context__), "".join(traceback.format_exception(e))):
        _no_fragment(text)


def test_third_party_log_records_are_redacted_without_any_filter(caplog: pytest.LogCaptureFixture) -> None:
    """httpcore and friends log at DEBUG with their own loggers; the record factory covers them."""
    logger = logging.getLogger("httpcore.http11.secrets_test")
    with caplog.at_level(logging.DEBUG):
        logger.debug("send_request_headers.started headers=%r", [(b"Authorization", f"Bearer {KEY}\n".encode())])
        logger.debug("key %s escaped %r", KEY[:-2], KEY + "\n")
        try:
            raise LeakyClientError(401, {"Authorization": f"Bearer {KEY}"})
        except LeakyClientError:
            logger.exception("failed")
        logger.warning("stack", stack_info=True, extra={"k": 1})
    for r in caplog.records:
        _no_fragment(r.getMessage())
        _no_fragment(repr(r.args))
    _no_fragment(caplog.text)


async def test_metric_labels_and_span_attributes_are_redacted(squirrel_manager: Any, squirrel_metrics: Any) -> None:
    p = provider("p", card(f"m-{KEY[:-3]}"))
    p.script(f"m-{KEY[:-3]}", Fail(AuthenticationError(f"bad key {KEY}", status_code=401)))
    async with squirrel_manager() as mm:
        for c in p.models:
            mm.register_model(c, p)
        with pytest.raises(SquirrelError) as info:
            await mm.complete(AIRequest.from_prompt("hi"))
    for text in (squirrel_metrics.everything(), *texts_of(info.value)):
        _no_fragment(text)
    assert "***" in squirrel_metrics.everything()


def test_the_cli_output_is_redacted_even_when_written_in_pieces() -> None:
    import io

    from squirrel_models.secrets import RedactingWriter

    out = io.StringIO()
    w = RedactingWriter(out)
    for piece in ("answer: ", KEY[:5], KEY[5:9], KEY[9:15], KEY[15:], " done", "\n", KEY[:-2], "!"):
        w.write(piece)
        w.flush()
    w.release()
    text = out.getvalue()
    _no_fragment(text)
    assert text == "answer: *** done\n***!"


async def test_an_error_closing_a_provider_leaves_sanitized(squirrel_manager: Any) -> None:
    from squirrel_models.errors import ProviderConnectionError

    class Closing(type(provider("p"))):  # type: ignore[misc]
        async def aclose(self) -> None:
            try:
                raise LeakyClientError(500, {"Authorization": f"Bearer {KEY}"})
            except LeakyClientError as exc:
                raise ProviderConnectionError("close failed") from exc

    p = Closing("p", [card("a")])
    mm = squirrel_manager()
    mm.register_model(p.models[0], p)
    mm._providers["p"] = p
    with pytest.raises(ProviderConnectionError) as info:
        await mm.aclose()
    assert not hasattr(info.value.__cause__, "request_headers")
    for text in [*texts_of(info.value), repr(info.value.__cause__)]:
        _no_fragment(text)


_COMPOSITES = {
    "url": ("postgresql://u:{pw}@h:5432/db", "Pg-emb/1st canary"),
    "url-unencoded-at": ("redis://:{pw}@h:6379/0", "Rd@emb?2nd-canary"),
    "query": ("unix:///run/r.sock?db=1&password={pw}", "Rd%20emb-3rd-canary"),
    "key-value-quoted": ("host=h password='{pw}' user=u", "Pg emb\\'4th-canary"),
    "key-value": ("host=h password = {pw} user=u", "Pg-emb-5th-canary")}


@pytest.mark.parametrize(("template", "password"), list(_COMPOSITES.values()), ids=list(_COMPOSITES))
def test_a_composite_secret_registers_the_password_it_embeds(template: str, password: str) -> None:
    """Found by shape alone, so also when the driver cannot parse the string (libpq's error
    then quotes the piece it choked on: ``unexpected spaces found in "<password>"``)."""
    from urllib.parse import unquote

    Secret(template.format(pw=password), opaque=False)
    plain = unquote(password).replace("\\'", "'")
    for shown in (password, plain, plain[2:-2], quote_all(plain)):
        text = redact(f'found in "{shown}", use %20')
        assert "***" in text and text.startswith("found in") and shown not in text, text
    assert redact("connection to h:5432 failed") == "connection to h:5432 failed"


def quote_all(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
