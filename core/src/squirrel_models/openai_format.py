"""OpenAI's chat-completions wire format, in and out.

Code written for the OpenAI SDK moves over in one line::

    response = await manager.complete(AIRequest.from_openai(body))
    return response.to_openai()          # a ChatCompletion, as a JSON-ready dict

- :meth:`AIRequest.from_openai <squirrel_models.AIRequest.from_openai>` reads a request body
  (``messages`` with text and image parts, ``max_tokens`` or ``max_completion_tokens``,
  ``temperature``, ``top_p``, ``seed``, ``n``, ``user``, ``stop``, ``response_format``,
  ``tools``, ``tool_choice``, ``metadata``: every field :class:`AIRequest` has under OpenAI's
  name); :meth:`OpenAIChatRequest.from_openai` also keeps what is about transport and
  routing (``model``, ``stream``, ``stream_options.include_usage``).
- A field it does not know, or cannot honour, is refused with
  :class:`~squirrel_models.errors.InvalidRequest` naming it, unless the caller passes it
  through explicitly (``passthrough=("logit_bias",)``): it is then sent as it is by providers
  that speak OpenAI's format (:attr:`AIRequest.extra`), and refused by the others so the next
  candidate is tried. A field left at the value that changes nothing (``n = 1``,
  ``logprobs = false``, ``presence_penalty = 0``...) is accepted.
- :meth:`AIResponse.to_openai <squirrel_models.AIResponse.to_openai>` gives the
  ``chat.completion`` object (tool calls and usage included); :func:`openai_chunk` a streamed
  :class:`~squirrel_models.StreamChunk` as a ``chat.completion.chunk``, and
  :func:`openai_usage_chunk` the last chunk ``stream_options.include_usage`` asks for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .errors import InvalidRequest, MalformedResponse, shown
from .messages import ImagePart, Message, TextPart, ToolCall
from .request import AIRequest
from .responses import Choice, ProviderResponse, Usage

if TYPE_CHECKING:
    from .responses import AIResponse, StreamChunk

__all__ = [
    "OpenAIChatRequest",
    "message_from_openai",
    "message_to_openai",
    "openai_chunk",
    "openai_usage",
    "openai_usage_chunk",
    "passable",
    "request_from_openai",
    "request_to_openai",
    "response_from_openai",
    "response_to_openai",
    "why_not_passable",
]

#: OpenAI fields that mean the same under the same name as an :class:`AIRequest` field.
#: Those the installed core lacks are refused (or accepted at their no-op value, below).
SAME_NAME = ("temperature", "top_p", "seed", "n", "user", "response_format", "tools",
             "tool_choice")
#: Fields read here, not by name (``model``, ``stream`` and its options are for the caller).
HANDLED = frozenset({"messages", "model", "max_tokens", "max_completion_tokens", "stop",
                     "stream", "stream_options", "metadata"})
#: A field at one of these values asks for nothing this library does not already do.
NO_OP: dict[str, tuple[Any, ...]] = {
    "n": (1,), "logprobs": (False,), "frequency_penalty": (0,), "presence_penalty": (0,),
    "parallel_tool_calls": (True,), "store": (False,), "service_tier": ("auto", "default"),
    "logit_bias": ({},), "top_p": (1,),
}
#: Fields that change what a request may cost or how it is carried: the library must read
#: them itself, so they cannot be passed through blindly.
NOT_PASSABLE = HANDLED | {"n", "tools", "tool_choice"}
#: Fields that make the upstream bill what neither the configured prices nor the reservation
#: (prompt + output cap at those prices) cover, each with why. Passed through, a client could
#: spend beyond what the budget reserved, so naming one in ``passthrough`` fails at start-up.
#: Fields whose cost the reservation already bounds stay passable: ``reasoning_effort`` and
#: ``verbosity`` (reasoning tokens are output tokens, within the output cap sent upstream),
#: ``logprobs`` and ``top_logprobs`` (not billed), ``logit_bias``, ``store``.
COST_CHANGING: Mapping[str, str] = {
    "service_tier": "it chooses the upstream's pricing tier (priority costs more than the configured prices)",
    "best_of": "the upstream generates and bills that many answers for one (vLLM, TGI)",
    "prediction": "rejected predicted tokens are billed as output on top of the answer",
    "audio": "audio output is billed at audio token prices, not the configured ones",
    "modalities": "it asks for audio output, billed at audio token prices, not the configured ones",
    "web_search_options": "each web search is billed per call, on top of the tokens",
    "functions": "the functions are prompt tokens the reservation does not count (set tools instead)",
    "function_call": "it goes with functions, prompt tokens the reservation does not count (set tool_choice)",
    "models": "OpenRouter falls back to the models it names, at their prices",
    "plugins": "OpenRouter bills its plugins (web search) per call, on top of the tokens",
}
#: Values of a cost-changing field that cost no more than leaving it out (a provider's
#: ``extra_body`` may set them: its value is known at start-up).
COST_NEUTRAL: Mapping[str, tuple[Any, ...]] = {"service_tier": ("auto", "default", "flex")}
#: A JSON array, parsed (a tuple, not ``list | tuple``: a union is built on every evaluation).
_ARRAYS = (list, tuple)
_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_call_id", "tool_calls", "refusal"})
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
          "tool": "tool"}
#: The roles whose message is whole with a role and a text (a tool's also names its call),
#: each to the role it is (one lookup where a membership test and a lookup were).
_TEXT_ROLES = {k: v for k, v in _ROLES.items() if k != "tool"}


# --- requests in -------------------------------------------------------------------------


@attrs.frozen
class OpenAIChatRequest:
    """An OpenAI chat-completions request body, read: the :class:`AIRequest` and what the
    body says about routing and transport (``model``: None when absent; ``stream``;
    ``include_usage``: ``stream_options.include_usage``)."""

    request: AIRequest
    model: str | None = None
    stream: bool = False
    include_usage: bool = False

    @classmethod
    def from_openai(cls, body: Any, *, passthrough: Collection[str] = (),
                    budget_key: str | None = None) -> OpenAIChatRequest:
        """Read ``body`` (a parsed JSON object). Raises :class:`InvalidRequest` naming the
        first offending field; ``passthrough`` names fields to send upstream as they are."""
        return cls(*_parse(body, passthrough, budget_key))


def request_from_openai(body: Any, *, passthrough: Collection[str] = (),
                        budget_key: str | None = None) -> AIRequest:
    """The :class:`AIRequest` of an OpenAI request body (``model`` and ``stream`` are read
    and checked, but routing is the caller's: see :class:`OpenAIChatRequest`)."""
    return _parse(body, passthrough, budget_key)[0]


def _parse(body: Any, passthrough: Collection[str], budget_key: str | None
           ) -> tuple[AIRequest, str | None, bool, bool]:
    """The request, ``model``, ``stream`` and ``include_usage`` of ``body``."""
    if type(body) is not dict and not isinstance(body, Mapping):
        raise InvalidRequest(f"the request body must be a JSON object, got {type(body).__name__}",
                             field="body")
    if isinstance(passthrough, str):
        passthrough = (passthrough,)
    for name in passthrough:
        if (why := why_not_passable(name)) is not None:
            raise InvalidRequest(f"cannot be passed through: {why}", field=name)
    kw: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in body.items():
        if not isinstance(key, str):
            raise InvalidRequest("field names must be strings", field=shown(key, 40))
        if key in HANDLED:
            continue
        if key in passthrough:
            extra[key] = value
        elif key in SAME_NAME and key in _OWN_FIELDS:
            if value is not None:
                kw[key] = _tools(value) if key == "tools" else value
        elif value is None or _no_op(key, value):
            continue  # null (OpenAI's "not given") or a value that asks for nothing
        else:
            known = key in SAME_NAME or key in NO_OP or key in _OPENAI_FIELDS
            raise InvalidRequest(
                ("is not supported by squirrel-models" if known else "is not a known field")
                + "; pass it through explicitly to send it upstream as it is", field=_key(key))
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidRequest(f"must be a non-empty string, got {_show(model)}", field="model")
    stream = body.get("stream")
    if stream is not False:  # not given, or to check
        stream = _bool(stream, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, Mapping):
            raise InvalidRequest(f"expected an object, got {_show(options)}", field="stream_options")
        if not stream:
            raise InvalidRequest("is only allowed when stream is true", field="stream_options")
        for k in options:
            if k != "include_usage":
                raise InvalidRequest("is not a known field", field=f"stream_options.{_key(k)}")
        include_usage = _bool(options.get("include_usage"), "stream_options.include_usage")
    if "messages" not in body:
        raise InvalidRequest("is required", field="messages")
    raw = body["messages"]
    if not isinstance(raw, _ARRAYS):
        raise InvalidRequest(f"expected an array, got {_show(raw)}", field="messages")
    kw["messages"] = [_plain_message(m) or _checked_message(m, f"messages[{i}]")
                      for i, m in enumerate(raw)]  # a list: no generator resumed per message
    max_tokens = body.get("max_tokens")
    mct = body.get("max_completion_tokens")
    if max_tokens is not None and mct is not None and max_tokens != mct:
        raise InvalidRequest("max_tokens and max_completion_tokens disagree; give one",
                             field="max_completion_tokens")
    limit = mct if mct is not None else max_tokens
    if limit is not None:
        if type(limit) is not int or not 0 < limit <= 10_000_000:
            raise InvalidRequest(f"must be an integer in 1..10,000,000, got {_show(limit)}",
                                 field="max_completion_tokens" if mct is not None else "max_tokens")
        kw["max_tokens"] = limit
    choice = body.get("tool_choice")
    if choice is not None and isinstance(choice, Mapping):  # None: no ABC check
        fn = choice.get("function")
        if choice.get("type") != "function" or not isinstance(fn, Mapping) \
                or not isinstance(fn.get("name"), str):
            raise InvalidRequest('a mapping must read {"type": "function", "function": {"name": ...}}',
                                 field="tool_choice")
    stop = body.get("stop")
    if stop is not None:
        kw["stop"] = stop if isinstance(stop, str) else _tuple(stop, "stop")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise InvalidRequest(f"expected an object, got {_show(metadata)}", field="metadata")
        kw["metadata"] = dict(metadata)
    if extra:
        kw["extra"] = extra
    if budget_key is not None:
        kw["budget_key"] = budget_key
    try:
        request = AIRequest(**kw)
    except InvalidRequest:
        raise
    except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        # an attrs converter given the wrong type (the validators name their fields)
        raise InvalidRequest(f"{type(exc).__name__}: {exc}"[:200], field="body") from None
    return request, model, stream, include_usage


#: Every top-level field of OpenAI's chat-completions request (to tell "unsupported" from
#: "unknown" in the refusal).
_OPENAI_FIELDS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model", "n",
    "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop",
    "store", "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
    "top_p", "user", "verbosity", "web_search_options",
})


def _no_op(key: str, value: Any) -> bool:
    """``value`` is the one of ``key`` that asks for nothing (``true`` is not ``1``)."""
    for v in NO_OP.get(key, ()):
        if isinstance(value, bool) is isinstance(v, bool) and type(value) in (type(v), float) \
                and value == v:
            return True
    return False


def passable(name: str) -> bool:
    """Whether ``name`` may be passed through (``passthrough=``): not a field squirrel-models
    reads itself (``model``, ``messages``, ``n``, ``tools``, an :class:`AIRequest` field...),
    nor one that changes what the request costs (:data:`COST_CHANGING`)."""
    return why_not_passable(name) is None


def why_not_passable(name: str) -> str | None:
    """Why ``name`` cannot be passed through, or None when it can (see :func:`passable`)."""
    if not isinstance(name, str) or not name:
        return "a field name must be a non-empty string"
    if name in NOT_PASSABLE or name in _OWN_FIELDS:
        return "it is read by squirrel-models itself (set the request's own field)"
    if name in COST_CHANGING:
        return f"it changes what the request costs upstream: {COST_CHANGING[name]}"
    return None


#: The request's own field names (set on the request, never passed through).
_OWN_FIELDS = frozenset(f.name for f in attrs.fields(AIRequest))


def _show(value: Any) -> str:
    """A bad value in a message: JSON-like, bounded; never raises (see :func:`shown`)."""
    if isinstance(value, str | int | float) or value is None:
        return shown(value)
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError, ArithmeticError, RecursionError):  # recursive, a huge int...
        return shown(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(name: str) -> str:
    """A field name the caller sent, as an error names it: printable ASCII up to 64
    characters as it is, anything else escaped and bounded (a lone surrogate or a line break
    in a name must not break the error that names it)."""
    if len(name) <= 64 and name.isascii() and name.isprintable():
        return name
    return json.dumps(name[:64])[1:-1] + ("..." if len(name) > 64 else "")


def _bool(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"expected true or false, got {_show(value)}", field=field)
    return value


def _tuple(value: Any, field: str) -> tuple[Any, ...]:
    if not isinstance(value, _ARRAYS):
        raise InvalidRequest(f"expected an array, got {_show(value)}", field=field)
    return tuple(value)


def _tools(value: Any) -> tuple[Any, ...]:
    """OpenAI tool definitions, checked for the shape every provider relies on: ``{"type":
    "function", "function": {"name": ..., "parameters": {...}}}`` (passed on as given)."""
    tools = _tuple(value, "tools")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise InvalidRequest(f"expected an object, got {_show(tool)}", field=where)
        if tool.get("type") != "function":
            raise InvalidRequest(f"must be 'function', got {_show(tool.get('type'))}", field=f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise InvalidRequest(f"expected an object, got {_show(fn)}", field=f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"expected a non-empty string, got {_show(name)}", field=f"{where}.function.name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise InvalidRequest(f"expected a JSON schema object, got {_show(params)}",
                                 field=f"{where}.function.parameters")
    return tools


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"expected a string, got {_show(value)}", field=field)
    return value


def _plain_message(data: Any) -> Message | None:
    """The usual message, ``{"role": ..., "content": "text"}``, in one step (the gateway
    builds every request's messages here), or None for any other: it gets every check of
    :func:`message_from_openai`, naming the field."""
    if type(data) is dict and len(data) == 2:
        role, content = data.get("role"), data.get("content")
        if type(content) is str and type(role) is str and (role := _TEXT_ROLES.get(role)):
            return Message(role, content)  # type: ignore[arg-type]
    return None


def message_from_openai(data: Any, where: str = "message") -> Message:
    """A :class:`Message` from an OpenAI message object (``developer`` is a system message;
    text content parts are joined; ``where`` prefixes the field names in errors)."""
    return _plain_message(data) or _checked_message(data, where)


def _checked_message(data: Any, where: str) -> Message:
    """:func:`message_from_openai` of any message, every field checked."""
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"expected an object, got {_show(data)}", field=where)
    for key in data:
        if key not in _MESSAGE_KEYS:
            raise InvalidRequest("is not a known message field",
                                 field=f"{where}.{_key(key) if isinstance(key, str) else shown(key)}")
    role = data.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise InvalidRequest("must be one of system, developer, user, assistant, tool, got "
                             f"{_show(role)}", field=f"{where}.role")
    calls: tuple[ToolCall, ...] = ()
    raw_calls = data.get("tool_calls")
    if raw_calls is not None:
        if role != "assistant":
            raise InvalidRequest("only assistant messages carry tool calls",
                                 field=f"{where}.tool_calls")
        calls = tuple(_tool_call_in(c, f"{where}.tool_calls[{j}]")
                      for j, c in enumerate(_tuple(raw_calls, f"{where}.tool_calls")))
    content = data.get("content")
    text: str | tuple[Any, ...]
    if content is None:
        if role != "assistant":
            raise InvalidRequest("is required", field=f"{where}.content")
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, _ARRAYS):
        text = _parts(content, f"{where}.content")
    else:
        raise InvalidRequest(f"expected a string or an array of parts, got {_show(content)}",
                             field=f"{where}.content")
    name = data.get("name")
    if name is not None:
        _text(name, f"{where}.name")
    call_id = data.get("tool_call_id")
    if role == "tool":
        _text(call_id, f"{where}.tool_call_id")
    elif call_id is not None:
        raise InvalidRequest("only tool messages answer a tool call", field=f"{where}.tool_call_id")
    refusal = data.get("refusal")
    if refusal is not None:
        _text(refusal, f"{where}.refusal")
    return Message(_ROLES[role], text, name=name, tool_call_id=call_id,  # type: ignore[arg-type]
                   tool_calls=calls)


def _parts(parts: Iterable[Any], where: str) -> tuple[TextPart | ImagePart, ...]:
    """OpenAI content parts as :class:`TextPart` and :class:`ImagePart` values (an image's
    URL is checked by :class:`AIRequest`, naming the part)."""
    out: list[TextPart | ImagePart] = []
    for k, part in enumerate(parts):
        field = f"{where}[{k}]"
        if not isinstance(part, Mapping):
            raise InvalidRequest(f"expected a content part object, got {_show(part)}", field=field)
        kind = part.get("type")
        if kind == "text":
            _only(part, ("type", "text"), field)
            out.append(TextPart(_text(part.get("text"), f"{field}.text")))
        elif kind == "image_url":
            _only(part, ("type", "image_url"), field)
            img = part.get("image_url")
            if isinstance(img, str):
                img = {"url": img}
            if not isinstance(img, Mapping):
                raise InvalidRequest(f"expected an object, got {_show(img)}", field=f"{field}.image_url")
            _only(img, ("url", "detail"), f"{field}.image_url")
            detail = img.get("detail")
            if detail is not None:
                _text(detail, f"{field}.image_url.detail")
            out.append(ImagePart(_text(img.get("url"), f"{field}.image_url.url"), detail))
        elif kind in ("input_audio", "file", "refusal"):
            raise InvalidRequest(f"{kind} content parts are not supported", field=f"{field}.type")
        else:
            raise InvalidRequest(f"must be 'text' or 'image_url', got {_show(kind)}", field=f"{field}.type")
    return tuple(out)


def _only(data: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in keys:
            raise InvalidRequest("is not a known field here",
                                 field=f"{where}.{_key(key) if isinstance(key, str) else shown(key)}")


def _tool_call_in(data: Any, where: str) -> ToolCall:
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"expected an object, got {_show(data)}", field=where)
    kind = data.get("type", "function")
    if kind != "function":
        raise InvalidRequest(f"must be 'function', got {_show(kind)}", field=f"{where}.type")
    fn = data.get("function")
    if not isinstance(fn, Mapping):
        raise InvalidRequest(f"expected an object, got {_show(fn)}", field=f"{where}.function")
    name = _text(fn.get("name"), f"{where}.function.name")
    if not name:
        raise InvalidRequest("a tool call needs a name", field=f"{where}.function.name")
    return ToolCall(_text(data.get("id"), f"{where}.id"), name,
                    _text(fn.get("arguments", ""), f"{where}.function.arguments"))


# --- requests out ------------------------------------------------------------------------


def message_to_openai(m: Message) -> dict[str, Any]:
    """``m`` as an OpenAI message object."""
    content: Any = m.content
    if type(content) is not str:
        content = [_part_out(p) for p in content]
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.tool_calls:
        out["tool_calls"] = [_tool_call_out(c) for c in m.tool_calls]
        if not m.content:
            out["content"] = None
    if m.name is not None:
        out["name"] = m.name
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _part_out(part: Any) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    image: dict[str, Any] = {"url": part.url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def request_to_openai(request: AIRequest, model: str | None = None) -> dict[str, Any]:
    """``request`` as an OpenAI request body (for ``model`` when given). ``budget_key`` has no
    OpenAI counterpart and is left out; :attr:`AIRequest.extra` fields are included."""
    body: dict[str, Any] = {**getattr(request, "extra", {})}
    if model is not None:
        body["model"] = model
    body["messages"] = [message_to_openai(m) for m in request.messages]
    if request.max_tokens is not None:
        body["max_completion_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    if request.metadata:
        body["metadata"] = dict(request.metadata)
    for name in SAME_NAME:
        value = getattr(request, name, None)
        if value is None or value == () or (name == "n" and value == 1):
            continue
        if name == "tools":
            value = [dict(t) for t in value]
        elif name == "response_format":
            value = value.to_openai()
        elif isinstance(value, Mapping):
            value = dict(value)
        body[name] = value
    return body


def _tool_call_out(c: ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments}}
    if index is not None:
        out = {"index": index, **out}
    return out


# --- responses ---------------------------------------------------------------------------


def openai_usage(usage: Usage) -> dict[str, Any]:
    """``usage`` as OpenAI's usage object."""
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


def response_to_openai(response: AIResponse, *, id: str | None = None,
                       created: int | None = None, model: str | None = None) -> dict[str, Any]:
    """``response`` as a ``chat.completion`` object. ``id`` defaults to ``chatcmpl-`` and the
    request id, ``created`` to now, ``model`` to the id of the model that answered."""
    choices = []
    for choice in getattr(response, "choices", None) or (response,):
        message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
        if choice.tool_calls:
            message["tool_calls"] = [_tool_call_out(c) for c in choice.tool_calls]
            if not choice.text:
                message["content"] = None
        choices.append({"index": getattr(choice, "index", 0), "message": message, "logprobs": None,
                        "finish_reason": choice.finish_reason or "stop"})
    return {
        "id": id or f"chatcmpl-{response.request_id or 'squirrel'}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model or response.model,
        "choices": choices,
        "usage": openai_usage(response.usage),
        "system_fingerprint": None,
    }


def response_from_openai(body: Any) -> ProviderResponse:
    """A ``chat.completion`` object as a :class:`ProviderResponse` (every choice; the first
    is also its ``text``). Raises :class:`MalformedResponse` for what the format does not
    allow."""
    if not isinstance(body, Mapping):
        raise MalformedResponse("a chat completion must be a JSON object")
    raw_choices = body.get("choices")
    if not isinstance(raw_choices, list) or not raw_choices:
        raise MalformedResponse("a chat completion needs a non-empty choices array")
    choices = []
    for i, choice in enumerate(raw_choices):
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(message, Mapping):
            raise MalformedResponse(f"choices[{i}].message must be an object")
        try:
            m = message_from_openai({k: v for k, v in message.items() if k in _MESSAGE_KEYS},
                                    f"choices[{i}].message")
        except InvalidRequest as exc:
            raise MalformedResponse(str(exc)) from None
        finish = choice.get("finish_reason")
        index = choice.get("index", i)
        choices.append(Choice(index if type(index) is int else i, m.text,
                              finish if isinstance(finish, str) else None, m.tool_calls))
    raw = body.get("usage")
    usage = Usage()
    if isinstance(raw, Mapping):
        details_in = raw.get("prompt_tokens_details")
        details_out = raw.get("completion_tokens_details")
        cached = details_in.get("cached_tokens") if isinstance(details_in, Mapping) else None
        reasoning = details_out.get("reasoning_tokens") if isinstance(details_out, Mapping) else None
        usage = Usage.from_report(raw.get("prompt_tokens", 0), raw.get("completion_tokens", 0),
                                  cached or 0, reasoning or 0, raw.get("total_tokens"))
    model = body.get("model")
    first = choices[0]
    return ProviderResponse(first.text, usage, first.finish_reason,
                            model if isinstance(model, str) else None, first.tool_calls,
                            tuple(choices) if len(choices) > 1 else ())


def openai_chunk(chunk: StreamChunk, *, id: str, model: str, created: int,
                 role: bool = False) -> dict[str, Any]:
    """``chunk`` as a ``chat.completion.chunk`` object. ``role``: the first chunk of a stream
    says ``"role": "assistant"``. The chunk's usage is left out: it goes in the usage chunk at
    the end (:func:`openai_usage_chunk`) when the client asked for it."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if chunk.text or role:
        delta["content"] = chunk.text
    if chunk.tool_calls:
        delta["tool_calls"] = [_delta_out(d) for d in chunk.tool_calls]
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": chunk.finish_reason}]}


def _delta_out(d: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": d.index}
    fn: dict[str, Any] = {}
    if d.id:
        out["id"] = d.id
        out["type"] = "function"
    if d.name:
        fn["name"] = d.name
    if d.arguments_fragment or not fn:
        fn["arguments"] = d.arguments_fragment
    out["function"] = fn
    return out


def openai_usage_chunk(usage: Usage, *, id: str, model: str, created: int) -> dict[str, Any]:
    """The last chunk of a stream whose request set ``stream_options.include_usage``: no
    choices, the usage of the whole answer."""
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": [], "usage": openai_usage(usage)}
