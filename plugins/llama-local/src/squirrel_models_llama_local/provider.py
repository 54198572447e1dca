"""The ``llama-local`` provider: GGUF models run in this process through llama-cpp-python.

Each model serves one generation at a time, in a worker thread, and queues the rest (FIFO,
up to ``max_queue`` waiting). ``live_stats`` reports the queue and the recent decoding speed
so the core's scoring sends work to an idle model rather than a busy one. Cancelling a
request stops its generation within a token (or, while the prompt is processed, within a
graph node) and frees the model for the next request.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import stat
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import sniffio
from squirrel_models.errors import (
    ConfigError,
    ContextWindowExceeded,
    InvalidRequestError,
    MidStreamError,
    ModelError,
    RateLimited,
    ServerError,
    shown_path,
)
from squirrel_models.forks import forget_in_child
from squirrel_models.providers import CountedStream, ProviderSpec
from squirrel_models.simple import refuse_unsupported
from squirrel_models.types import AIRequest, ModelCard, Price, ProviderResponse, StreamChunk, TokenCount, Usage
from squirrel_models.unanswered import mark_unsent

from ._assets import ModelDownloadError, default_model_path
from ._gguf import GGUFInfo, read_gguf_metadata
from .options import DEFAULT_MAX_CTX, PROVIDER_TYPE, LlamaLocalOptions
from .runtime import Generation, GenerationInterrupted, LocalModel, ModelClosed, ModelLoadError, ModelSettings

__all__ = ["PROVIDER_TYPE", "LlamaLocalProvider"]

COUNT_METHOD = "llama.cpp tokenizer with the model's chat template"
log = logging.getLogger("squirrel_models_llama_local")


def _read_and_generated(cut: BaseException, prompt: int, output: int) -> None:
    """A generation cut short before any answer or chunk: what it read and generated rides
    on the cancellation, and the core charges that (the attempt's ``usage``), not the worst
    case ``[budget] charge_unanswered`` assumes when nobody knows."""
    with contextlib.suppress(AttributeError):
        cut.usage = Usage(prompt, output, source="counted")  # type: ignore[attr-defined]


def _cancelled() -> bool:
    """Whether the task waiting on this worker thread has been cancelled (cheap, no hop)."""
    try:
        anyio.from_thread.check_cancelled()
    except BaseException:
        return True
    return False


def _pump(gen: Generation, bridge: _Bridge) -> None:
    """Worker thread of a stream: generate, handing each piece to the event loop."""
    try:
        while (piece := gen.step()) is not None:
            if piece:
                bridge.put(piece)
    except GenerationInterrupted:
        pass
    except Exception as exc:
        bridge.error = exc
    finally:
        try:
            gen.close()
        finally:
            bridge.finish()


def _loop_caller() -> Callable[[Callable[[], object]], object]:
    """A thread-safe, non-blocking "run this on the current event loop soon"."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    import asyncio

    return asyncio.get_running_loop().call_soon_threadsafe



class _Bridge:
    """Pieces from a worker thread to the event loop without a blocking round trip per token
    (``anyio.from_thread`` waits for the loop each time: about a tenth of decoding speed)."""

    def __init__(self) -> None:
        self.items: collections.deque[str] = collections.deque()
        self.done = False
        self.error: Exception | None = None
        self._waiter: anyio.Event | None = None
        self._call_soon = _loop_caller()

    def _wake(self) -> None:
        ev, self._waiter = self._waiter, None
        if ev is not None:
            try:
                self._call_soon(ev.set)
            except RuntimeError:  # the event loop is gone: nobody is waiting any more
                pass

    def put(self, piece: str) -> None:  # worker thread
        self.items.append(piece)
        self._wake()

    def finish(self) -> None:  # worker thread
        self.done = True
        self._wake()

    async def _wait(self) -> None:
        ev = self._waiter = anyio.Event()
        if self.items or self.done:  # arrived between the check and the waiter
            self._waiter = None
            return
        await ev.wait()

    async def get(self) -> str | None:
        """The next piece, or None when the thread has finished."""
        while True:
            if self.items:
                return self.items.popleft()
            if self.done:
                return None
            await self._wait()

    async def finished(self) -> None:
        while not self.done:
            self.items.clear()
            await self._wait()


#: The request fields llama-local honours (tools and passed-through fields are refused above,
#: with a hint; ``user`` needs nothing).
TAKES = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop", "user", "response_format",
                   "tools", "extra"})


def _llama_seed(seed: int) -> int:
    """A request's 64-bit seed as llama.cpp's 32-bit one (whose all-ones value means random)."""
    import llama_cpp

    s = seed & 0xFFFFFFFF
    return 0 if s == llama_cpp.LLAMA_DEFAULT_SEED else s


@functools.lru_cache(maxsize=64)
def _grammar_for(schema: str | None) -> str:
    """GBNF for JSON (``schema`` None) or for the JSON schema ``schema`` (JSON text)."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    return JSON_GBNF if schema is None else json_schema_to_gbnf(schema)


def _model_name(path: Path) -> str:
    return path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name


class LlamaLocalProvider:
    """GGUF files named in the options (or the default SmolLM2 model), served in-process."""

    def __init__(self, spec: ProviderSpec) -> None:
        opts = spec.options
        if not isinstance(opts, LlamaLocalOptions):  # built by hand with a dict
            opts = LlamaLocalOptions(**dict(opts or {}))
        self.name: str = spec.name
        self.options = opts
        self._field = f"providers.{spec.name}.options"
        self._overrides = {o.name: o for o in spec.models}
        self._models: dict[str, LocalModel] = {}
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self._cards: list[ModelCard] | None = None
        self._closed = False
        # Files named in the options are checked now, so bad configuration fails at start-up.
        self._infos: list[GGUFInfo] | None = self._explicit_files() if (opts.models or opts.folder) else None
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The turns taken and queued are the parent's requests: held here, they never end.
        self._limiters = {}
        for m in self._models.values():
            m.pending = 0

    def __repr__(self) -> str:
        return f"LlamaLocalProvider(name={self.name!r}, models={sorted(self._models)!r})"

    # --- model files -------------------------------------------------------------------

    def _read(self, path: Path, field: str) -> GGUFInfo:
        # What is there instead of a file says what to mend: a folder or a device is not
        # "missing", and a path the system cannot look up (a loop of links) says why.
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(f"no such GGUF file: {shown_path(path)}", field=field) from None
        except OSError as exc:
            raise ConfigError(f"{shown_path(path)} cannot be opened: {exc.strerror or type(exc).__name__}",
                              field=field) from None
        if not stat.S_ISREG(mode):
            what = "is a folder, not a GGUF file" if stat.S_ISDIR(mode) else "is not a regular file (never read)"
            raise ConfigError(f"{shown_path(path)} {what}", field=field)
        try:
            return read_gguf_metadata(path)
        except ValueError as exc:
            raise ConfigError(str(exc), field=field) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {shown_path(path)}: {exc.strerror or type(exc).__name__}",
                              field=field) from None

    def _explicit_files(self) -> list[GGUFInfo]:
        opts, infos = self.options, []
        for i, p in enumerate(opts.models):
            infos.append(self._read(Path(p).expanduser(), f"{self._field}.models[{i}]"))
        if opts.folder is not None:
            folder = Path(opts.folder).expanduser()
            field = f"{self._field}.folder"
            if not folder.is_dir():
                raise ConfigError(f"no such folder: {folder}", field=field)
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".gguf")
            if not files:
                raise ConfigError(f"no *.gguf file in {folder}", field=field)
            infos.extend(self._read(p, f"{field} ({p.name})") for p in files)
        return infos

    def _default_file(self) -> list[GGUFInfo]:
        field = f"{self._field}.models"
        from ._assets import MODEL_FILENAME, default_cache_dir

        cached = default_cache_dir() / MODEL_FILENAME
        if not self.options.download and not cached.is_file():
            raise ConfigError(f"no model configured and the default model is not in {cached} "
                              "(download = false)", field=field)
        try:
            path = default_model_path()
        except ModelDownloadError as exc:
            raise ConfigError(f"no model configured and the default model could not be fetched: {exc}",
                              field=field) from None
        return [self._read(path, field)]

    def _settings(self, info: GGUFInfo) -> ModelSettings:
        o = self.options
        n_ctx = o.n_ctx or min(info.context_length or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)
        return ModelSettings(n_ctx=n_ctx, n_threads=o.n_threads, n_batch=o.n_batch,
                             idle_unload_s=o.idle_unload_s, seed=o.seed)

    def _card(self, m: LocalModel) -> ModelCard:
        info = m.info
        template = info.chat_template or ""
        # A grammar holds any model's output to JSON, or to a JSON schema.
        features = {"streaming", "json_mode", "json_schema"}
        if "system" in template:
            features.add("system_prompt")
        card = ModelCard.for_provider(
            self.name, m.name, provider_type=PROVIDER_TYPE,
            capabilities={"chat", "completion"} if template else {"completion"},
            features=features, context_window=m.settings.n_ctx, price=Price.free(),
            tags={"local"},
            metadata={"path": str(info.path), "architecture": info.architecture,
                      "parameter_count": info.parameter_count, "quantization": info.quantization,
                      "trained_context_length": info.context_length, "model_name": info.name,
                      "chat_template": bool(template)})
        override = self._overrides.get(m.name)
        return override.apply(card) if override is not None else card

    def _build(self, infos: list[GGUFInfo]) -> list[ModelCard]:
        models: dict[str, LocalModel] = {}
        for info in infos:
            name = _model_name(info.path)
            if name in models:
                raise ConfigError(f"two model files are named {name!r}: {models[name].path} and {info.path}",
                                  field=f"{self._field}.models")
            models[name] = LocalModel(name, info, self._settings(info))
        unknown = set(self._overrides) - set(models)
        if unknown:
            raise ConfigError(f"no model file named {', '.join(sorted(unknown))}; served: "
                              f"{', '.join(sorted(models))}", field=f"providers.{self.name}.models")
        for m in models.values():  # exact counting needs the tokenizer: load it now, not mid-request
            try:
                m.load_tokenizer()
            except Exception as exc:
                raise ConfigError(f"llama.cpp cannot read {m.path}: {type(exc).__name__}: {exc}",
                                  field=f"{self._field}.models") from None
        self._models = models
        return [self._card(m) for m in models.values()]

    async def list_models(self) -> Sequence[ModelCard]:
        if self._cards is None:
            infos = self._infos
            if infos is None:
                infos = await anyio.to_thread.run_sync(self._default_file)
            self._cards = await anyio.to_thread.run_sync(self._build, infos)
        return list(self._cards)

    # --- requests ----------------------------------------------------------------------

    async def _model(self, card: ModelCard) -> LocalModel:
        if self._closed:
            raise self._closed_error(card)
        if self._cards is None:
            await self.list_models()
        m = self._models.get(card.model)
        if m is None:
            raise InvalidRequestError(f"no model {card.model!r} here; served: {', '.join(sorted(self._models))}",
                                      model_id=card.id, provider=self.name, status_code=404)
        return m

    def _prepare(self, m: LocalModel, card: ModelCard, request: AIRequest) -> tuple[list[int], int]:
        if request.tools or request.tool_choice is not None:
            # Dropping them would answer a different question; the cards do not list "tools".
            raise InvalidRequestError(
                "llama-local models do not take tools; ask for ModelRequirements(required_features={'tools'}) "
                "to route tool requests to models that do", model_id=card.id, provider=self.name,
                model_specific=True)
        if request.extra:  # OpenAI-format fields passed through: only an OpenAI-style API takes them
            raise InvalidRequestError(
                f"llama-local models cannot take the passed-through field(s) {', '.join(sorted(request.extra))}",
                model_id=card.id, provider=self.name, model_specific=True)
        # Images: the cards do not list "vision", so selection sends none here; n: one answer.
        refuse_unsupported(card, request, TAKES, provider=self.name)
        self._grammar(request, card)
        try:
            prompt = m.prompt_tokens([(msg.role, msg.text) for msg in request.messages])
        except ModelClosed:
            raise self._closed_error(card) from None
        except Exception as exc:
            raise InvalidRequestError(f"the chat template refused the messages: {type(exc).__name__}: {exc}",
                                      model_id=card.id, provider=self.name) from exc
        window = m.settings.n_ctx
        room = window - len(prompt)
        wanted = request.max_tokens if request.max_tokens is not None else room
        if room < 1 or wanted > room:
            needed = len(prompt) + max(wanted, 1)
            raise ContextWindowExceeded(
                f"{len(prompt)} prompt tokens + {max(wanted, 1)} output tokens = {needed} do not fit the "
                f"{window}-token context window", needed=needed, window=window, model_id=card.id,
                provider=self.name)
        return prompt, wanted

    def _generation(self, m: LocalModel, prompt: list[int], max_tokens: int, request: AIRequest,
                    is_cancelled: Callable[[], bool] = _cancelled) -> Generation:
        # ``user`` names the caller for an upstream's abuse monitoring: nothing to do here.
        seed = None if request.seed is None else _llama_seed(request.seed)
        return Generation(m, prompt, max_tokens, temperature=request.temperature, stop=request.stop,
                          is_cancelled=is_cancelled, top_p=request.top_p, seed=seed,
                          grammar=self._grammar(request, None))

    def _grammar(self, request: AIRequest, card: ModelCard | None) -> str | None:
        """The GBNF grammar that holds the answer to ``response_format``: llama.cpp's JSON
        grammar for JSON mode, the schema's own (llama-cpp-python's converter) for a schema.
        A schema the converter cannot take: refused (another model may take it)."""
        rf = request.response_format
        if rf is None or rf.type == "text":
            return None
        try:
            # The schema as given (not sorted): its property order is the answer's key order.
            schema = json.dumps(rf.to_openai()["json_schema"]["schema"]) if rf.type == "json_schema" else None
            return _grammar_for(schema)
        except Exception as exc:  # the converter raises what it likes for a schema it cannot read
            raise InvalidRequestError(
                f"llama.cpp cannot hold the answer to this JSON schema ({type(exc).__name__}: "
                f"{str(exc)[:200]})", model_id=card.id if card else None, provider=self.name,
                model_specific=True) from None

    @contextlib.asynccontextmanager
    async def _turn(self, m: LocalModel, card: ModelCard) -> AsyncIterator[None]:
        """Wait for the model's turn (FIFO); ``m.pending`` counts the queue and the running one."""
        if self._closed:
            raise self._closed_error(card)
        if m.pending > self.options.max_queue:
            raise RateLimited(f"{m.name} is busy: {m.pending - 1} request(s) already waiting "
                              f"(max_queue = {self.options.max_queue})", model_id=card.id, provider=self.name)
        limiter = self._limiters.get(m.name)
        if limiter is None:
            limiter = self._limiters[m.name] = anyio.CapacityLimiter(1)
        borrower = object()  # not the task: a stream may be closed from another task
        m.pending += 1
        try:
            try:
                await limiter.acquire_on_behalf_of(borrower)
            except anyio.get_cancelled_exc_class() as cut:
                mark_unsent(cut)  # cut while queued: the model never read the request
                raise
            try:
                yield
            finally:
                limiter.release_on_behalf_of(borrower)
        finally:
            m.pending -= 1

    def _closed_error(self, card: ModelCard) -> ServerError:
        """A request to a closed provider: it never reached the model, and never will."""
        err = ServerError(f"the provider {self.name!r} is closed", model_id=card.id, provider=self.name)
        err.retryable, err.sent = False, False
        return err

    def _runtime_error(self, exc: BaseException, card: ModelCard, gen: Generation | None = None,
                       prompt: int = 0) -> ModelError:
        """``exc`` (raised by a generation) as a :class:`ServerError` carrying what the model
        read and generated before it, if it began."""
        usage = Usage(prompt, gen.output_tokens, source="counted") if gen is not None and gen.began else None
        if isinstance(exc, ModelClosed):
            err = ServerError(f"the provider {self.name!r} was closed: {exc}", model_id=card.id,
                              provider=self.name, usage=usage)
            err.retryable = False
            if usage is None:
                err.sent = False  # the model never took the request
            return err
        err = ServerError(f"llama.cpp failed: {type(exc).__name__}: {exc}", model_id=card.id, provider=self.name,
                          usage=usage)
        if isinstance(exc, ModelLoadError):
            err.retryable = False  # the same file will not load on a second try: fall back at once
        return err

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        m = await self._model(model)
        prompt, max_tokens = self._prepare(m, model, request)
        async with self._turn(m, model):
            gen = self._generation(m, prompt, max_tokens, request)
            interrupted = False

            def work() -> str:
                nonlocal interrupted
                try:
                    return gen.run()
                except GenerationInterrupted:
                    interrupted = True
                    return ""
                finally:
                    gen.close()

            try:
                text = await anyio.to_thread.run_sync(work)
            except Exception as exc:
                raise self._runtime_error(exc, model, gen, len(prompt)) from exc
            if interrupted:
                try:
                    await anyio.lowlevel.checkpoint()  # delivers the cancellation that stopped us
                except anyio.get_cancelled_exc_class() as cut:
                    _read_and_generated(cut, len(prompt), gen.output_tokens)
                    raise
                raise ServerError("the generation was interrupted", model_id=model.id, provider=self.name)
        usage = Usage(len(prompt), gen.output_tokens, source="counted")
        return ProviderResponse(text, usage, gen.finish_reason, raw_model=m.name)

    def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        counted = CountedStream()
        counted.chunks = self._stream(model, request, counted)
        return counted

    async def _stream(self, model: ModelCard, request: AIRequest, counted: CountedStream
                      ) -> AsyncGenerator[StreamChunk, None]:
        m = await self._model(model)
        prompt, max_tokens = self._prepare(m, model, request)
        async with self._turn(m, model):
            stop = threading.Event()
            gen = self._generation(m, prompt, max_tokens, request, stop.is_set)
            bridge = _Bridge()
            threading.Thread(target=_pump, args=(gen, bridge), name=f"llama-local {m.name}", daemon=True).start()
            sent = False
            cut: BaseException | None = None
            try:
                while (piece := await bridge.get()) is not None:
                    sent = True
                    yield StreamChunk(piece)
                if bridge.error is not None:
                    err = self._runtime_error(bridge.error, model, gen, len(prompt))
                    if sent:
                        raise MidStreamError(str(err), partial_text=gen.text,
                                             usage=Usage(len(prompt), gen.output_tokens, source="counted"),
                                             model_id=model.id, provider=self.name) from bridge.error
                    raise err from bridge.error
                yield StreamChunk("", usage=Usage(len(prompt), gen.output_tokens, source="counted"),
                                  finish_reason=gen.finish_reason)
            except anyio.get_cancelled_exc_class() as exc:
                cut = exc
                raise
            finally:
                stop.set()  # closed early or cancelled: the thread stops within a token
                with anyio.CancelScope(shield=True):
                    await bridge.finished()
                # The thread has ended: what the model read and generated is final, also the
                # tokens generated after the last chunk the caller got (held back for a stop
                # string, not yet read, or made while the stop was on its way).
                counted.usage = Usage(len(prompt), gen.output_tokens, source="counted")
                if cut is not None and not sent:  # (after a chunk: the core reads counted.usage)
                    _read_and_generated(cut, len(prompt), gen.output_tokens)

    # --- counting and live statistics ----------------------------------------------------

    def count_tokens(self, model: ModelCard, request: AIRequest | None, text: str | None) -> TokenCount | None:
        """Exact count with the model's tokenizer (None for a model this provider does not serve)."""
        m = self._models.get(model.model) if model.provider == self.name else None
        if m is None:
            return None
        try:
            if request is not None:
                n = len(m.prompt_tokens([(msg.role, msg.text) for msg in request.messages]))
            else:
                n = m.count_text(text or "")
        except Exception:  # the core falls back to an upper bound
            log.debug("counting tokens for %s failed", model.id, exc_info=True)
            return None
        return TokenCount(n, exact=True, method=COUNT_METHOD)

    def live_stats(self, model: ModelCard) -> Mapping[str, float]:
        """``queue_depth``: requests queued or running on the model; ``tokens_per_s``: recent
        decoding speed (left out until measured)."""
        m = self._models.get(model.model)
        if m is None:
            return {}
        stats: dict[str, float] = {"queue_depth": float(m.pending)}
        rate = m.tokens_per_s
        if rate is not None:
            stats["tokens_per_s"] = rate
        return stats

    def loaded_models(self) -> list[str]:
        """Names of the models currently loaded in memory."""
        return sorted(n for n, m in self._models.items() if m.loaded)

    def local_model(self, name: str) -> LocalModel:
        return self._models[name]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        models = list(self._models.values())

        def close_all() -> None:
            for m in models:
                m.close()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close_all)


def factory(spec: ProviderSpec) -> LlamaLocalProvider:
    return LlamaLocalProvider(spec)

