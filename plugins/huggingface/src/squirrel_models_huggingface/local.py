"""Local transformers models, run in-process (the ``local`` extra: transformers and torch).

The model folder is what ``save_pretrained`` writes (``config.json``, weights, tokenizer files),
loaded offline (``local_files_only``) in a worker thread when the provider lists its models.

Generation runs in a thread of its own, never on the event loop. Its tokens travel to the
event loop one by one through a memory stream (``anyio.from_thread`` with the loop's token, so
it works on asyncio and trio alike). Closing a stream early, cancelling a call or a deadline
sets the generation's stop event, which a ``StoppingCriteria`` checks after every token:
generation stops within one token's time, and the thread is joined before the call returns.
One generation runs at a time per model (a CPU runs one well); the others wait their turn,
still cancellable.

Token counts are exact: the model's own tokenizer over its chat template, so usage is
``counted`` and the ``count_tokens`` hook answers for these models. A call or stream cut short
(a deadline, a caller's cancellation, a stream closed early) is charged the same count of
what the model read and generated, not an assumed worst case; one cut while it still waited
for the model's turn, nothing (see :func:`_count_cut`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
from squirrel_models.errors import (
    ConfigError,
    ContextWindowExceeded,
    InvalidRequestError,
    MidStreamError,
    ModelError,
    ServerError,
)
from squirrel_models.providers import CountedStream, ModelOverride
from squirrel_models.simple import refuse_unsupported
from squirrel_models.types import AIRequest, ModelCard, ProviderResponse, StreamChunk, TokenCount, Usage
from squirrel_models.unanswered import mark_unsent

from ._cards import local_card
from ._errors import log
from .options import HuggingFaceOptions

__all__ = ["LocalBackend"]

#: The request fields a local generation honours (``user``: nothing to pass on, nothing to
#: do). transformers alone cannot hold an answer to JSON, and one generation gives one answer:
#: ``response_format``, ``n``, images and tools are refused.
LOCAL_SUPPORTS = frozenset({"max_tokens", "stop", "temperature", "top_p", "seed", "user"})

#: How long closing a stream waits for its generation thread (it stops within one token).
JOIN_S = 10.0
_INSTALL = "pip install 'squirrel-models-huggingface[local]'"


class _Stopped(Exception):
    """Raised inside the generation thread when the consumer went away."""


class _Generation:
    """One generation in its thread: the stop event, the outcome and the streamer protocol
    (``put``/``end``, what ``model.generate(streamer=...)`` calls)."""

    def __init__(self, backend: LocalBackend, prompt_ids: list[int], max_new: int, request: AIRequest,
                 send: Any, token: Any) -> None:
        self.backend = backend
        self.prompt_ids = prompt_ids
        self.max_new = max_new
        self.request = request
        self.stop = threading.Event()
        self.generated: list[int] = []
        self.sent = ""
        self.finish: str | None = None
        #: The model began (it reads the prompt first): not while waiting for its turn.
        self.started = False
        self._send = send
        self._token = token
        self._prompt_seen = False
        self.thread = threading.Thread(target=self._run, name=f"hf-generate-{backend.model_name}", daemon=True)

    # -- the streamer protocol (called by generate, in this thread) --

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate first hands the prompt over
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        self.generated.extend(int(i) for i in ids)
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, *, final: bool) -> None:
        text = self.backend.decode(self.generated)
        if not final and text.endswith("\ufffd"):
            return  # half a multi-byte character: wait for the rest
        for s in self.request.stop:
            at = text.find(s)
            if at >= 0:
                text = text[:at]
                self.finish = "stop"
                self.stop.set()
        piece = text[len(self.sent):] if text.startswith(self.sent) else ""
        if piece:
            self.sent += piece
            self._post(("text", piece))

    def _post(self, item: tuple[str, Any]) -> None:
        try:
            anyio.from_thread.run_sync(self._send.send_nowait, item, token=self._token)
        except Exception as exc:  # the consumer closed its end, or its event loop is gone
            self.stop.set()
            raise _Stopped from exc

    # -- the thread --

    def _run(self) -> None:
        lock = self.backend.generate_lock
        while not lock.acquire(timeout=0.05):
            if self.stop.is_set():
                return
        try:
            if not self.stop.is_set():
                self.started = True
                self.backend.generate(self)
            eos = self.backend.eos_ids
            if self.finish is None:
                if self.generated and self.generated[-1] in eos:
                    self.finish = "stop"
                else:
                    self.finish = "length" if len(self.generated) >= self.max_new else "stop"
            self._post(("done", None))
        except _Stopped:
            pass
        except BaseException as exc:  # reported to the consumer, who raises it as a ModelError
            try:
                self._post(("error", exc))
            except _Stopped:
                pass
        finally:
            lock.release()



def _count_cut(gen: _Generation, ids: list[int], counted: CountedStream, cut: BaseException | None) -> None:
    """What a generation closed or cut short used, once its thread has ended: the prompt
    (read as soon as ``generate`` began) and every token generated, also those the caller
    never received; nothing if it was still waiting for its turn. A cancellation carries it
    (``usage``, or ``sent = False`` for nothing: see :mod:`squirrel_models.unanswered`) for
    a call cut before its answer. A thread still running after ``JOIN_S`` has no final count:
    then nothing is said, and the core charges what ``[budget] charge_unanswered`` assumes."""
    if gen.thread.is_alive():
        return
    if not gen.started:
        if cut is not None:
            mark_unsent(cut)
        return
    counted.usage = LocalBackend._usage(ids, gen)
    if cut is not None:
        with contextlib.suppress(AttributeError):
            cut.usage = counted.usage  # type: ignore[attr-defined]


class _StopCriteria:
    """A transformers ``StoppingCriteria``: true for every sequence once the event is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class LocalBackend:
    """One local transformers model for one provider instance."""

    def __init__(self, name: str, options: HuggingFaceOptions, overrides: Sequence[ModelOverride] = (), *,
                 field: str = "model_path") -> None:
        assert options.model_path is not None
        self.name = name
        self.options = options
        #: Errors at start-up (loading) come from outside the factory: name the field in full.
        self.field = f"providers.{name}.options.model_path"
        self.folder = Path(options.model_path).expanduser()
        if not (self.folder / "config.json").is_file():
            raise ConfigError(f"{str(self.folder)!r} is not a transformers model folder (no config.json)",
                              field=field)
        self.model_name = options.model or self.folder.name
        self._override = next((o for o in overrides if o.name == self.model_name), None)
        self._model: Any = None
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()  # fast tokenizers must not be used by two threads at once
        self.generate_lock = threading.Lock()
        self.eos_ids: frozenset[int] = frozenset()
        self.card: ModelCard | None = None
        self._load_lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.folder)!r}, loaded={self._model is not None})"

    @property
    def loaded(self) -> bool:
        return self._model is not None

    # --- loading -----------------------------------------------------------------------------

    async def load(self) -> ModelCard:
        """Load the tokenizer and the model in a worker thread (once) and return the card."""
        if self._load_lock is None:
            self._load_lock = anyio.Lock()
        async with self._load_lock:
            if self.card is None:
                await anyio.to_thread.run_sync(self._load_sync)
            assert self.card is not None
            return self.card

    def _load_sync(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ConfigError(f"local models need transformers and torch ({exc.name} is missing): {_INSTALL}",
                              field=self.field) from exc
        o = self.options
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            dtype: Any = "auto" if o.dtype == "auto" else getattr(torch, o.dtype)
            model: Any = AutoModelForCausalLM.from_pretrained(str(self.folder), local_files_only=True, dtype=dtype)
            model = model.to(o.device)
            model.eval()
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"cannot load the model in {str(self.folder)!r}: {type(exc).__name__}: {exc}",
                              field=self.field) from exc
        if o.threads is not None:
            torch.set_num_threads(o.threads)  # process-wide: torch has no per-model setting
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self._tokenizer, self._model = tokenizer, model
        self.card = local_card(self.name, self.model_name, self.folder, self._override,
                               has_chat_template=bool(getattr(tokenizer, "chat_template", None)))
        log.info("%s: loaded %s (%s) from %s", self.name, self.model_name,
                 self.card.metadata.get("architecture"), self.folder)

    async def aclose(self) -> None:
        self._model = None
        self._tokenizer = None
        self.card = None

    # --- tokens ------------------------------------------------------------------------------

    def prompt_ids(self, request: AIRequest) -> list[int]:
        """The prompt's token ids: the chat template with the generation prompt, or, for a
        model without a template, ``role: content`` lines ending in ``assistant:``."""
        tok = self._tokenizer
        with self._tokenizer_lock:
            if getattr(tok, "chat_template", None):
                messages = [{"role": m.role, "content": m.text} for m in request.messages]
                text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                return list(tok(text, add_special_tokens=False)["input_ids"])
            text = "\n".join(f"{m.role}: {m.text}" for m in request.messages) + "\nassistant:"
            return list(tok(text)["input_ids"])

    def count_prompt(self, request: AIRequest) -> TokenCount | None:
        if self._tokenizer is None:
            return None
        return TokenCount(len(self.prompt_ids(request)), exact=True, method="transformers tokenizer + chat template")

    def count_text(self, text: str) -> TokenCount | None:
        if self._tokenizer is None:
            return None
        with self._tokenizer_lock:
            n = len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return TokenCount(n, exact=True, method="transformers tokenizer")

    def decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    # --- generation --------------------------------------------------------------------------

    def generate(self, gen: _Generation) -> None:
        """Run ``model.generate`` for ``gen`` (in its thread)."""
        import copy

        import torch
        from transformers import StoppingCriteriaList

        model, tok = self._model, self._tokenizer
        if model is None:
            raise RuntimeError("the model was closed")
        ids = torch.tensor([gen.prompt_ids], dtype=torch.long, device=model.device)
        config = copy.deepcopy(model.generation_config)
        config.max_new_tokens = gen.max_new
        config.min_new_tokens = None
        config.max_length = None
        t, top_p = gen.request.temperature, gen.request.top_p
        if t:
            config.do_sample, config.temperature = True, float(t)
            if top_p is not None:
                config.top_p = float(top_p)
        else:  # greedy (top_p has nothing to choose from): clear sampling settings so
            # transformers has nothing to warn about
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        if gen.request.seed is not None:  # one generation at a time: the global RNG is ours
            torch.manual_seed(gen.request.seed & 0xFFFFFFFFFFFFFFFF)
        if config.pad_token_id is None:
            config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_ids), None)
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, streamer=gen,
                           stopping_criteria=StoppingCriteriaList([_StopCriteria(gen.stop)]))

    def _plan(self, card: ModelCard, request: AIRequest) -> tuple[list[int], int]:
        if self._model is None:
            raise ServerError("the local model is not loaded (list_models first, or it was closed)")
        if request.extra:  # OpenAI-format fields passed through: only an OpenAI-style API takes them
            raise InvalidRequestError(
                f"a local model cannot take the passed-through field(s) {', '.join(sorted(request.extra))}",
                model_id=card.id, provider=self.name, model_specific=True)
        ids = self.prompt_ids(request)
        window = card.context_window
        wanted = request.max_tokens or card.output_limit
        if len(ids) + 1 > window:
            raise ContextWindowExceeded(f"the prompt has {len(ids)} tokens; the context window is {window}",
                                        needed=len(ids) + wanted, window=window)
        return ids, max(1, min(wanted, window - len(ids)))

    def stream(self, card: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        counted = CountedStream()
        counted.chunks = self._stream(card, request, counted)
        return counted

    async def _stream(self, card: ModelCard, request: AIRequest, counted: CountedStream
                      ) -> AsyncGenerator[StreamChunk, None]:
        # The generation loop honours these; tools (and any other field) would be dropped,
        # which answers another question: refused, naming the field, so another model is tried.
        refuse_unsupported(card, request, LOCAL_SUPPORTS, provider=self.name)
        ids, max_new = self._plan(card, request)
        send, receive = anyio.create_memory_object_stream[tuple[str, Any]](math.inf)
        gen = _Generation(self, ids, max_new, request, send, anyio.lowlevel.current_token())
        gen.thread.start()
        parts: list[str] = []
        cut: BaseException | None = None
        try:
            async with receive:
                async for kind, value in receive:
                    if kind == "text":
                        parts.append(value)
                        yield StreamChunk(value)
                    elif kind == "error":
                        err: ModelError = ServerError(f"local generation failed ({type(value).__name__})")
                        if parts:
                            err = MidStreamError(f"local generation failed after its first chunk "
                                                 f"({type(value).__name__})", partial_text="".join(parts),
                                                 usage=self._usage(ids, gen))
                        raise err.with_context(model_id=card.id, provider=self.name) from value
                    else:
                        break
        except anyio.get_cancelled_exc_class() as exc:
            cut = exc
            raise
        finally:
            gen.stop.set()
            send.close()
            if gen.thread.is_alive():
                with anyio.CancelScope(shield=True), anyio.move_on_after(JOIN_S):
                    await anyio.to_thread.run_sync(gen.thread.join, abandon_on_cancel=True)
            _count_cut(gen, ids, counted, cut)
        yield StreamChunk("", self._usage(ids, gen), gen.finish)

    @staticmethod
    def _usage(ids: list[int], gen: _Generation) -> Usage:
        return Usage(len(ids), len(gen.generated), source="counted")

    async def complete(self, card: ModelCard, request: AIRequest) -> ProviderResponse:
        parts: list[str] = []
        usage, finish = None, None
        async with contextlib.aclosing(self.stream(card, request)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                parts.append(chunk.text)
                if chunk.usage is not None:
                    usage, finish = chunk.usage, chunk.finish_reason
        assert usage is not None
        return ProviderResponse("".join(parts), usage, finish, self.model_name)
