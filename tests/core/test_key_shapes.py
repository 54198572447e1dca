"""A key pasted into a field that is not a secret is never echoed: the one redaction point
masks text shaped like a well-known provider key or token, registered or not, and never a
model id, field name or word."""

from __future__ import annotations

import io
import json
import logging
import re
import string
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from squirrel_models import AIRequest, ModelRequirements, SquirrelError, load_config
from squirrel_models import secrets as secrets_module
from squirrel_models.keyshapes import LABELS, contains_key_shape
from squirrel_models.secrets import MASK, RedactingWriter, Secret, redact
from squirrel_models.testing import Reply

from ..support.canary import leaks, pasted_key, texts_of
from .helpers import card, provider

pytestmark = pytest.mark.anyio

#: A key of each vendor, shaped as the secret scanners (gitleaks, detect-secrets) describe it.
VENDORS = ["sk-", "sk-proj-", "sk-svcacct-", "sk-ant-api03-", "hf_", "gsk_", "xai-", "ghp_",
           "github_pat_", "glpat-", "xoxb-", "sk_live_", "rk_live_"]


def _aws_key() -> str:
    import secrets as random_source

    return pasted_key("AKIA")[:4] + "".join(random_source.choice(string.ascii_uppercase + "234567")
                                            for _ in range(16))


@pytest.mark.parametrize("prefix", VENDORS)
def test_a_key_of_each_vendor_is_masked_unregistered(prefix: str) -> None:
    key = pasted_key(prefix)
    for text in (key, f"got {key!r}", f"headers.{key}: bad", f"key:{key}", f"[{key}]"):
        assert not leaks([redact(text)], key)
        assert MASK in redact(text)


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["sk-", "sk-proj-", "sk-test-", "sk-svcacct-", "sk-or-v1-"]),
       alphabet=st.sampled_from([string.ascii_lowercase + string.digits, string.hexdigits.lower(),
                                 string.ascii_uppercase + string.digits]),
       data=st.data())
def test_a_key_in_one_case_with_digits_is_masked_unregistered(prefix: str, alphabet: str,
                                                               data: st.DataObject) -> None:
    # Test keys and some providers' keys are lower-case (or upper-case) and digits: the mixed
    # case the sk- shape once required let 'sk-proj-' and 24 of them through.
    body = data.draw(st.text(alphabet, min_size=16, max_size=64).filter(
        lambda t: any(c.isdigit() for c in t)))
    key = prefix + body
    for text in (key, f"Incorrect API key provided: {key}.", f'{{"key": "{key}"}}'):
        assert not leaks([redact(text)], key), text


def test_google_aws_bearer_and_jwt_shapes_are_masked() -> None:
    google = pasted_key("AIza", 39)  # AIza and exactly 35 more
    aws = _aws_key()
    bearer = pasted_key("", 32)
    jwt = (pasted_key("eyJ", 20) + "." + pasted_key("eyJ", 30) + "." + pasted_key("", 30)).replace("=", "")
    for key, text in ((google, f"x-goog-api-key {google}"), (aws, f"id {aws} here"),
                      (bearer, f"Authorization: Bearer {bearer}"), (jwt, f"token={jwt}")):
        assert not leaks([redact(text)], key), text
    assert redact(f"Authorization: Bearer {bearer}") == f"Authorization: Bearer {MASK}"


# --- never a model id, a field name or a word -----------------------------------------------

_word = st.text(string.ascii_lowercase, min_size=1, max_size=12)
_version = st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,2})?[a-z]?", fullmatch=True)
_model_id = st.lists(st.one_of(_word, _version), min_size=1, max_size=8).flatmap(
    lambda parts: st.lists(st.sampled_from("-_.:/"), min_size=len(parts) - 1,
                           max_size=len(parts) - 1).map(
        lambda seps: parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=True))))
_field = st.lists(st.one_of(_word, st.integers(0, 99).map(lambda i: f"[{i}]")), min_size=1,
                  max_size=6).map(".".join)
_sentence = st.lists(st.one_of(_word, _word.map(str.capitalize), _version, _model_id, _field),
                     max_size=30).map(" ".join)


#: A credential's name (alone, or ending a longer one after ``_``, ``-``, ``.`` or ``/``) right
#: before ``:`` or ``=``: an assignment by the context rule, whatever looks like a model id
_ASSIGNED = re.compile(r"(?<![A-Za-z0-9])(?i:"
                       + "|".join(re.escape(x) for x in sorted(LABELS, key=len, reverse=True))
                       + r")[:=]")


@settings(max_examples=300, deadline=None)
@given(_sentence)
def test_model_ids_field_names_and_words_are_never_masked(text: str) -> None:
    # A drawn model id may read ``passwd:a``, ``a-apikey:a`` or ``api_key:a`` (hypothesis also
    # draws the string constants of the code under test, ``LABELS`` among them): a credential's
    # name and its value by the context rule, masked on purpose (the next test). Leaving such
    # names out of the words would not do: ``api``, ``_`` and ``key`` make one. Every other id,
    # field name and word stays readable, credentials' names alone included.
    if _ASSIGNED.search(text):
        return
    assert not contains_key_shape(text)
    assert not contains_key_shape(text.title())


@pytest.mark.parametrize("text", ["passwd:a", "token:ab", "secret:x", "ollama/api_key:latest",
                                  "db.password=hunter2", "llama3-token:8b"])
def test_a_credentials_name_then_a_separator_masks_what_follows_even_in_an_id(text: str) -> None:
    """A model id or tag shaped ``NAME:VALUE`` with a credential's name is masked: the text
    cannot tell it from ``password:hunter2`` in a log line, and masking a rare id costs less
    than echoing a password."""
    assert contains_key_shape(text)
    assert MASK in redact(text)


@pytest.mark.parametrize("text", [
    "providers[0].options.api_key_env", "budget.limits[3].scope", "metadata.request_id",
    "Authorization: Bearer <key>", "send it as 'Authorization: Bearer <key>'", "gpt-4o-mini-2024-07-18",
    "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-Coder-32B-Instruct-GGUF:Q4_K_M",
    "sk-learn-regressor-2024-07-18-large", "hf_hub_download", "task-abcdefghijklmnopqrstu1234",
    "AKIA is not an id", "eyJhbGciOiJIUzI1NiJ9 alone", "bearer of bad news 2024",
    "chatcmpl-9f1c2e4b5a6d7e8f9a0b1c2d", "0123456789abcdef0123456789abcdef0123456789abcdef",
    "sk-learn-2024-release-notes-and-upgrade-guide", "sk-1234567-build-2024-07-18"])
def test_near_misses_are_not_masked(text: str) -> None:
    assert not contains_key_shape(text)


# --- the placements that echoed a pasted key --------------------------------------------------


def _shown(exc: BaseException) -> list[str]:
    assert isinstance(exc, SquirrelError), repr(exc)
    return texts_of(exc)


@pytest.mark.parametrize("place", ["provider name", "budget scope", "budget scope key", "metadata"])
def test_a_key_pasted_into_a_field_is_not_echoed_by_its_error(place: str) -> None:
    key = pasted_key()
    make: dict[str, Any] = {
        "provider name": lambda: load_config({"providers": [{"name": f"{key}/", "type": "x"}]}),
        "budget scope": lambda: load_config({"budget": {"limits": [{"scope": key, "limit": "1"}]}}),
        "budget scope key": lambda: load_config(
            {"budget": {"limits": [{"scope": f"key:{key}\n", "limit": "1"}]}}),
        "metadata": lambda: AIRequest.from_prompt("hi", metadata={key: object()}),
    }
    with pytest.raises(SquirrelError) as info:
        make[place]()
    texts = _shown(info.value)
    assert not leaks(texts, key)
    assert MASK in str(info.value)


async def test_a_key_pinned_as_a_model_is_not_echoed(squirrel_manager) -> None:
    key = pasted_key()
    p = provider("p", card("a"))
    async with squirrel_manager(None) as mm:
        mm.register_model(p.models[0], p)
        with pytest.raises(SquirrelError) as info:
            await mm.complete(AIRequest.from_prompt("hi"), ModelRequirements(models=frozenset({key})))
        assert not leaks(_shown(info.value), key)
        with pytest.raises(SquirrelError) as removed:
            mm.remove_model(key)
        assert not leaks(_shown(removed.value), key)


async def test_a_key_given_as_budget_key_is_not_echoed_by_the_budget(squirrel_manager) -> None:
    key = pasted_key("sk-ant-api03-")
    p = provider("p", card("a", price=("1000", "1000")))
    mm = squirrel_manager({"budget": {"limits": [{"scope": "key:*", "limit": "0.000001"}]}})
    mm.register_model(p.models[0], p)
    async with mm:
        with pytest.raises(SquirrelError) as info:
            await mm.complete(AIRequest.from_prompt("hi", budget_key=key, max_tokens=10))
        assert not leaks(_shown(info.value), key)


def test_a_key_shaped_variable_name_is_not_echoed(monkeypatch) -> None:
    """``AKIA...`` also looks like a variable's name: it was quoted as one that is not set."""
    from squirrel_models.errors import ConfigError

    key = _aws_key()
    monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError) as info:
        Secret.from_env(key, field="providers[0].options.api_key_env")
    assert "the value given is not shown" in str(info.value)
    assert not leaks(_shown(info.value), key) and key not in str(info.value.args)


# --- logs, metrics, streams -------------------------------------------------------------------


def test_a_log_record_never_shows_a_key_shaped_text(caplog) -> None:
    key = pasted_key("hf_")
    with caplog.at_level(logging.INFO, "squirrel_models.test_key_shapes"):
        logging.getLogger("squirrel_models.test_key_shapes").info("budget key %s refused", key)
    assert caplog.records and not leaks([caplog.text, caplog.records[0].getMessage()], key)


async def test_a_metric_label_never_shows_a_key_shaped_text(squirrel_manager, squirrel_metrics) -> None:
    key = pasted_key("gsk_", 56)
    p = provider(key[:52], card("a", provider=key[:52]))
    p.script("a", Reply("hi"))
    async with squirrel_manager(None) as mm:
        mm.register_model(p.models[0], p)
        await mm.complete(AIRequest.from_prompt("hi", max_tokens=5))
    assert not leaks([squirrel_metrics.everything()], key[:52])


def test_a_key_written_in_pieces_is_masked_by_the_cli_stream() -> None:
    key = pasted_key("xai-", 60)
    out = io.StringIO()
    writer = RedactingWriter(out)
    for piece in ("your key: ", key[:2], key[2:9], key[9:30], key[30:], " thanks\n"):
        writer.write(piece)
    writer.release()
    assert out.getvalue() == f"your key: {MASK} thanks\n"
    plain = io.StringIO()
    plain_writer = RedactingWriter(plain)
    for piece in ("so", "me wor", "ds\n"):
        plain_writer.write(piece)
    assert plain.getvalue() == "some words\n"


#: What the CLI stream holds back, as first written: one expression anchored at the end. It
#: backtracked through a long run at each of the run's starts (40 ms for 4,100 characters
#: ending in "!"); ``_key_start`` now finds the same start in linear time.
_HELD_TAIL = re.compile(r"(?:(?<![A-Za-z0-9_-])(?i:bearer)[ \t]+)?[A-Za-z0-9_.~+/=-]{0,4096}\Z")
_TAIL_PIECES = ["bearer", "Bearer", "BEA", "b", " ", "\t", "sk-", "hf_", "a", "Z9", "/", "+", "=",
                ".", "!", "\n", "x" * 50, "y" * 4000, "xoxb-", "eyJ", "-", "_"]


def _held_by_the_expression(text: str) -> int:
    m = _HELD_TAIL.search(text, max(0, len(text) - 4200))
    if m is None or m.start() == m.end():
        return 0
    return secrets_module._shaped_start(m.group(0))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_TAIL_PIECES), max_size=12))
def test_the_cli_stream_holds_back_what_the_anchored_expression_did(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert secrets_module._shaped_start(text) == _held_by_the_expression(text)


# --- keys of any shape, by where they stand (a context rule) ----------------------------------

_ODD_VALUES = ["Zx!9@q", "my.custom-key_42", "0000", "a", "pass:word", "%41%42", "tok/en+="]


@pytest.mark.parametrize("value", _ODD_VALUES)
@pytest.mark.parametrize("form", [
    "api_key={v}", "API_KEY = {v}", "apikey:{v}", 'config {{"api_key": "{v}"}}', "x-api-key: {v}",
    '{{\\"api_key\\": \\"{v}\\"}}', "Authorization: Bearer {v}", "authorization: Basic {v}",
    "Authorization: {v}", "x-goog-api-key: {v}", "client_secret='{v}'", "api-key = {v} and more",
    "Proxy-Authorization: Basic {v}", "access_token={v}&x=1"])
def test_a_value_after_a_credential_name_is_masked_whatever_its_shape(form: str, value: str
                                                                      ) -> None:
    """Before: only the listed shapes were masked, so a key of another format (a self-hosted
    server's, a proxy's) after ``api_key=`` or in an ``x-api-key`` header was shown."""
    text = form.format(v=value)
    out = redact(text)
    assert out == form.format(v=MASK), out
    assert contains_key_shape(text)


@pytest.mark.parametrize("value", ["BearerZx9", "bearer!x9", "Basic/x", "token.k"])
def test_a_value_that_begins_like_a_scheme_word_is_masked(value: str) -> None:
    """Only the word alone is a scheme (``Authorization: Bearer <key>``): hypothesis found
    ``api_key=bearer!...`` shown whole."""
    assert redact(f"api_key={value}") == f"api_key={MASK}"


_LABELED = st.sampled_from(["api_key", "API-Key", "x-api-key", "Authorization", "client_secret",
                            "access_token", "apikey"])
_VALUE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                               blacklist_characters="\"'`\\,;&<>()[]{}"), min_size=1,
                 max_size=40).filter(lambda v: v.lower() not in ("bearer", "basic", "token", "apikey"))


@settings(max_examples=300, deadline=None)
@given(_LABELED, st.sampled_from(["=", ": ", " = ", '": "']), _VALUE)
def test_any_value_after_a_name_is_masked(label: str, sep: str, value: str) -> None:
    text = f"{label}{sep}{value}"
    assert redact(text) == f"{label}{sep}{MASK}"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_word, _model_id, _field, _LABELED,
                          _LABELED.map(lambda x: x + "_env"), st.sampled_from(
                              ["the", "was", "granted", "is", "required", "set", "missing"])),
                max_size=30).map(" ".join))
def test_names_in_ordinary_messages_mask_nothing(text: str) -> None:
    """A credential's name in a sentence, a model id or a field path masks nothing: only a
    ``=`` or ``:`` after it (blanks allowed: ``api_key = "..."`` in TOML) makes what follows
    a value (``the authorization was granted``, ``api_key_env is missing``). A drawn model
    id may read ``a-apikey:a``: a name and its value, masked on purpose (see
    :func:`test_model_ids_field_names_and_words_are_never_masked`)."""
    if _ASSIGNED.search(text):
        return
    assert not contains_key_shape(text), text
    assert redact(text) == text


def test_a_value_after_a_name_written_in_pieces_is_masked_by_the_cli_stream() -> None:
    out = io.StringIO()
    writer = RedactingWriter(out)
    for piece in ("curl -H 'x-a", "pi-k", "ey: ", "my-od", "d!key", "' https://h\n", "done a",
                  "pi_key=", "v@lue", " ok\n"):
        writer.write(piece)
    writer.release()
    assert out.getvalue() == f"curl -H 'x-api-key: {MASK}' https://h\ndone api_key={MASK} ok\n"


async def test_a_successful_request_does_not_redact(squirrel_manager, monkeypatch) -> None:
    """Redaction runs on text that leaves the library (errors, logs, labels): after the first
    request has seen its label values, a request that succeeds calls it never, with metrics
    and spans recording."""
    calls = {"n": 0}
    real = secrets_module.redact

    def counting(text: str) -> str:
        calls["n"] += 1
        return real(text)

    monkeypatch.setattr(secrets_module, "redact", counting)
    p = provider("p", card("a"))
    p.script("a", *[Reply("hi")] * 21)
    async with squirrel_manager({"budget": {"limits": [{"scope": "global", "limit": "100"}]}}) as mm:
        mm.register_model(p.models[0], p)
        await mm.complete(AIRequest.from_prompt("hi", max_tokens=5))
        first = calls["n"]
        for _ in range(20):
            resp = await mm.complete(AIRequest.from_prompt("hi", max_tokens=5))
            assert resp.cost is not None and resp.cost > Decimal(0)
    assert calls["n"] == first, f"{calls['n'] - first} calls of redact in 20 successful requests"


# --- passwords, secrets and tokens by their names; passwords in a URL's userinfo -------------

_CREDENTIAL_NAMES = ["password", "Password", "PASSWORD", "passwd", "pwd", "secret", "token", "private_key",
                     "refresh_token", "session_token", "X-Session-Token", "db_password", "REDIS_PASSWORD",
                     "aws-secret", "id_token"]


@pytest.mark.parametrize("value", _ODD_VALUES)
@pytest.mark.parametrize("form", [
    "password: {v}", "PASSWORD={v}", '{{"password": "{v}"}}', "passwd = {v}", "pwd={v}", "secret: {v}",
    "token={v}", "private_key: {v}", "refresh_token={v}&x=1", "X-Session-Token: {v}", "DB_PASSWORD={v}",
    '{{\\"password\\": \\"{v}\\"}}', "?user=a&password={v}&x=1", "host=h password={v} dbname=d",
    "postgresql://user:{v}@db.example:5432/app", "redis://:{v}@127.0.0.1:6379/0",
    "rediss://default:{v}@cache/1 failed", 'dsn = "postgres://u:{v}@h/d"', "db.password = {v}",
    "database.password={v}"])
def test_a_password_secret_or_token_is_masked_by_where_it_stands(form: str, value: str) -> None:
    """Before: only API-key names were context names, and a URL's userinfo was masked only
    when the URL was a registered secret: ``password: x`` and ``redis://:PW@host`` in a
    driver's message, a log line or an echoed config were shown."""
    text = form.format(v=value)
    assert redact(text) == form.format(v=MASK)
    assert contains_key_shape(text)


_SECRET_VALUE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                                      blacklist_characters="\"'`\\,;&<>()[]{}"), min_size=1,
                        max_size=40).filter(lambda v: v.lower() not in ("bearer", "basic", "token", "apikey"))


def _escaped(value: str) -> set[str]:
    once = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1]}
    return once | {json.dumps(f)[1:-1] for f in once}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_CREDENTIAL_NAMES), st.sampled_from(["=", ": ", " = ", "url"]), _SECRET_VALUE,
       st.sampled_from(["plain", "json", "json twice", "repr"]))
def test_a_credential_never_shows_escaped_or_not(name: str, sep: str, value: str, wrap: str) -> None:
    text = f"redis://user:{value}@host:6379" if sep == "url" else f"{name}{sep}{value}"
    if wrap == "plain":
        masked = f"redis://user:{MASK}@host:6379" if sep == "url" else f"{name}{sep}{MASK}"
        assert redact(text) == masked
        return
    if wrap == "json":
        text = json.dumps({"error": text} if sep in ("url", ": ") else {name: value})
    elif wrap == "json twice":
        text = json.dumps(json.dumps({name: value} if sep != "url" else {"dsn": text}))
    else:
        text = repr({"message": text})
    out = redact(text)
    assert MASK in out, (text, out)
    shown = out.replace(name, "")  # the name stays; a value may be part of it (token: ok)
    assert not any(form in shown for form in _escaped(value) if len(form) >= 4 and form not in text.replace(
        value, "")), (text, out)


@pytest.mark.parametrize("text", [
    "password_env = PG_PASSWORD_VAR", "token_env: HF_TOKEN", "secret_env=X", "tokens used: 12",
    "max_tokens=5", "token_counter", "max_completion_tokens: 64", "passwordless login is on",
    '{"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cached_tokens": 0}',
    '"usage": {"input_tokens": 10, "output_tokens": 4}', "the password was wrong", "a secret recipe",
    "tokenizer: cl100k_base", "Token budget exceeded", "tokens: 12 of 4096", "secrets are registered",
    "http://127.0.0.1:8080/v1", "https://huggingface.co/api/models/org/m?expand=x",
    "redis://127.0.0.1:6379/0", "postgresql://user@db.example/app", "postgresql:///app?host=/run/pg",
    "mail me at a@b.org: now", "ssh git@github.com:org/repo.git", "time: 12:30 at home@9"])
def test_ordinary_texts_come_out_unchanged(text: str) -> None:
    """Credential names inside longer words or names (``max_tokens``, ``password_env``),
    usage fields and URLs without a password mask nothing."""
    assert redact(text) == text
    assert not contains_key_shape(text)


_FIELD_NAMES = st.one_of(
    st.sampled_from(LABELS),
    st.builds(lambda pre, name, up: (pre + name).upper() if up else pre + name,
              st.sampled_from(["", "db_", "redis_", "X-Session-", "my_", "upstream_"]),
              st.sampled_from(LABELS), st.booleans()),
    st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True))
_PATHS = st.builds(lambda parents, name: ".".join([*parents, name]),
                   st.lists(st.sampled_from(["budget", "options", "gateway", "keys[1]", "providers[0]"]),
                            max_size=2), _FIELD_NAMES)


@settings(max_examples=150, deadline=None)
@given(path=_PATHS, message=st.sampled_from(["unknown key", "expected a string",
                                             "must not be set here", "expected one of a, b"]))
def test_our_errors_name_their_field_however_it_is_named(path: str, message: str) -> None:
    """Our errors naming a field (``token: unknown key``, top level or dotted) read as they
    are, wherever they are shown again (the CLI's output, a log line: each redacts again);
    the same name followed by a value anywhere else is still masked. Before: an unknown
    top-level key ``token`` read ``token: *** key`` (only a dotted path was spared, by its
    dot, which also spared ``db.password: hunter2`` in any text)."""
    from squirrel_models import ConfigError, InvalidRequest

    for err in (ConfigError(message, field=path), InvalidRequest(message, field=path)):
        assert str(err) == f"{path}: {message}"
        assert redact(f"{type(err).__name__}: {err}") == f"{type(err).__name__}: {err}"
        assert MASK not in repr(err)
    if contains_key_shape(f"{path}: hunter2"):  # a credential's name: its value is masked
        assert redact(f"{path}: hunter2") == f"{path}: {MASK}"
        assert redact(f"upstream said {path}: hunter2 is wrong") == f"upstream said {path}: {MASK} is wrong"


def test_a_secret_in_our_field_error_is_still_masked() -> None:
    from squirrel_models import ConfigError

    key = pasted_key()
    err = ConfigError(f"expected a string, got {key!r}", field="password")
    assert key not in str(err) and key not in repr(err) and str(err).startswith("password: expected")
    err = ConfigError("unknown key", field=f"providers[0].options.{key}")  # a key pasted as a name
    assert key not in str(err)
    ConfigError("unknown key", field="token")
    assert redact("password: hunter2, token: unknown key") == f"password: {MASK}, token: unknown key"


def test_a_url_written_in_pieces_is_masked_by_the_cli_stream() -> None:
    out = io.StringIO()
    writer = RedactingWriter(out)
    for piece in ("cannot reach redis://:Zx", "9pass@", "127.0.0.1:6379 (refused)\n", "db_pass", "word=",
                  "hunter2 ok\n"):
        writer.write(piece)
    writer.release()
    assert out.getvalue() == f"cannot reach redis://:{MASK}@127.0.0.1:6379 (refused)\ndb_password={MASK} ok\n"


def test_every_name_holds_a_part_the_quick_check_looks_for() -> None:
    """A text is searched for names only when it holds one of their parts: a name added
    without its part would never be found."""
    from squirrel_models.keyshapes import _LABEL_PARTS

    assert all(any(part in label for part in _LABEL_PARTS) for label in LABELS)


@pytest.mark.parametrize(("text", "shown"), [
    ("GET https://generativelanguage.example/v1/models?key=Zx9-unshaped&alt=json failed",
     f"GET https://generativelanguage.example/v1/models?key={MASK}&alt=json failed"),
    ("https://acct.blob.example/c/b?sv=2022-11-02&sig=q%2Fx9Zk%3D&se=2026",
     f"https://acct.blob.example/c/b?sv=2022-11-02&sig={MASK}&se=2026"),
    ("https://b.s3.example/o?X-Amz-Credential=AKID%2F2026&X-Amz-Signature=9f8e7d",
     f"https://b.s3.example/o?X-Amz-Credential={MASK}&X-Amz-Signature={MASK}"),
    ("redirected to https://app.example/cb?state=1&code=4/0Adeu5BW",
     f"redirected to https://app.example/cb?state=1&code={MASK}"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCY", f"AWS_SECRET_ACCESS_KEY={MASK}"),
    ("aws_secret_access_key = hunter2", f"aws_secret_access_key = {MASK}"),
    ("Ocp-Apim-Subscription-Key: 0f1e2d3c", f"Ocp-Apim-Subscription-Key: {MASK}"),
])
def test_credentials_in_a_query_or_an_access_key_name_are_masked(text: str, shown: str) -> None:
    """A URL's ``key=``, ``sig=``, ``X-Amz-Signature=``, ``code=`` and a name ending in
    ``access_key`` or ``subscription-key`` carry a credential whatever its shape: they were
    shown as they stood (``?key=`` of Google's APIs, AWS's secret access key)."""
    assert redact(text) == shown
    assert contains_key_shape(text)


@pytest.mark.parametrize("text", [
    "https://h.example/models?sort=key&keyword=llama", "https://h.example/p?monkey=1&keys=2",
    "exit code=2", "the access key was rotated", "subscription_key_env = AZURE_KEY_VAR"])
def test_query_and_access_key_near_misses_are_not_masked(text: str) -> None:
    assert redact(text) == text
