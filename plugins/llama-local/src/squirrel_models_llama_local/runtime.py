"""One GGUF model in this process: its tokenizer and chat template, lazy loading, idle
unloading, and the generation loop that a worker thread drives.

Everything here is synchronous and thread-safe; :mod:`.provider` runs it off the event loop.
Facts about llama-cpp-python 0.3.36 this relies on (checked by the tests):

- a prompt rendered with the model's own chat template and tokenized with
  ``special=True`` (BOS added unless the template wrote it) is exactly what llama.cpp
  reports as ``prompt_tokens``;
- the prompt is processed by one ``llama_decode`` call that only an abort callback can
  interrupt (it then fails with ``llama_decode returned 2`` and the model stays usable after
  a reset); the callback runs once per graph node, so it is installed only while the prompt
  is processed, not during decoding;
- decoding yields one token per step of ``Llama.generate``, so stopping between tokens is
  immediate;
- one compute thread (``n_threads = n_threads_batch = 1``) holds its speed on a busy machine
  where two collapse.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from squirrel_models.forks import forget_in_child

from ._gguf import GGUFInfo

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = ["Generation", "GenerationInterrupted", "LocalModel", "ModelClosed", "ModelLoadError",
           "ModelSettings"]

log = logging.getLogger("squirrel_models_llama_local")

#: How many recent generations the tokens-per-second figure averages over.
RATE_WINDOW = 8
#: Models a forked child inherited in the middle of a generation: never used nor freed there.
_INHERITED: list[Any] = []


class ModelLoadError(RuntimeError):
    """llama.cpp could not load the model file (gone, unreadable, unsupported): trying the
    same model again will not help."""


class ModelClosed(RuntimeError):
    """The model was closed (its provider closed) before or while it generated: a running
    generation stops within a token, or within a graph node while it reads its prompt."""


class GenerationInterrupted(Exception):
    """The generation was stopped because its request was cancelled."""


@attrs.frozen
class ModelSettings:
    """How a model is loaded and run (from the provider options)."""

    n_ctx: int
    n_threads: int = 1
    n_batch: int = 512
    idle_unload_s: float | None = 300.0
    seed: int | None = None


#: what llama.cpp's system info says of a build with ggml's AMX kernels turned on
_AMX_MARK = "AMX_INT8 = 1"
_build_checked = threading.Event()
#: set by _check_build: models must load without ggml's extra buffer types (an AMX build)
_plain_buffers = False
#: serializes the swap in _without_extra_buffers (two models may load in two worker threads)
_params_swap = threading.Lock()


def amx_warning(system_info: str) -> str | None:
    """The warning for a llama.cpp build whose AMX kernels are on, else None.

    With llama-cpp-python 0.3.36 those kernels crash the whole process (SIGSEGV in
    ``ggml_backend_amx_mul_mat``) on the first multi-token prompt of a Q4_1 model, which no
    Python code can catch. Such a build is what ``pip install`` compiles by default
    (``-march=native``) on a CPU with AMX, so models then load without the kernels (see
    :func:`_without_extra_buffers`: measured, no slower than the portable build) and the
    reason is logged at info level (``-v``): nothing for the user to do, so no warning."""
    if _AMX_MARK not in system_info:
        return None
    return ("this llama-cpp-python build has ggml's AMX kernels, which crash the process on "
            "some quantized models (seen with 0.3.36 and Q4_1): models load without them and "
            "without ggml's weight repacking; a build with CMAKE_ARGS=\"-DGGML_NATIVE=OFF "
            "-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON\" (pip install --no-cache-dir) has "
            "none to leave out (see the squirrel-models-llama-local README)")


def _check_build() -> bool:
    """Whether models must load without ggml's extra buffer types; the first call per
    process reads the loaded build, and logs why if it is one known to crash."""
    global _plain_buffers
    if not _build_checked.is_set():
        import llama_cpp

        warning = amx_warning(llama_cpp.llama_print_system_info().decode(errors="replace"))
        _plain_buffers = warning is not None
        _build_checked.set()
        if warning:
            log.info("%s", warning)
    return _plain_buffers


@contextlib.contextmanager
def _without_extra_buffers() -> Iterator[None]:
    """A ``Llama`` made inside loads its weights without ggml's extra buffer types: the AMX
    kernels (and the CPU repacking) are never used, so an AMX build does not crash.

    ``Llama`` of llama-cpp-python 0.3.36 has no argument for llama.cpp's ``use_extra_bufts``;
    it starts from ``llama_cpp.llama_cpp.llama_model_default_params()``, so for the length of
    the load that function returns the defaults with ``use_extra_bufts`` off. The field and
    that call are checked by tests/llama_local/test_build.py (the version is pinned <0.4)."""
    from llama_cpp import llama_cpp as low

    with _params_swap:
        defaults = low.llama_model_default_params

        def plain() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = plain
        try:
            yield
        finally:
            low.llama_model_default_params = defaults


@contextlib.contextmanager
def _quiet_llama() -> Iterator[None]:
    """Silence llama.cpp's C-level log lines while loading (a vocabulary-only model warns about
    its context), then keep errors only: what ``Llama(verbose=False)`` means to do."""
    from llama_cpp import _logger

    logger = _logger.logger
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(logging.ERROR)


class LocalModel:
    """A GGUF model file: metadata (read at start-up), a tokenizer (vocabulary only, small,
    loaded on first count), and the model itself (loaded on first use, unloaded when idle).

    ``pending`` (requests queued or running) is kept by the provider on the event loop;
    ``tokens_per_s`` is the decoding speed of recent generations.
    """

    def __init__(self, name: str, info: GGUFInfo, settings: ModelSettings) -> None:
        self.name, self.info, self.settings = name, info, settings
        self.path: Path = info.path
        self.pending = 0
        self.loads = 0
        self._state = threading.Lock()  # guards _llm, _in_use, _timer
        #: notified when _in_use drops to 0: close() waits for it before freeing the model
        self._idle = threading.Condition(self._state)
        self._llm: Llama | None = None
        self._in_use = 0
        self._last_used = time.monotonic()
        self._timer: threading.Timer | None = None
        self._closed = False
        self._vocab_lock = threading.Lock()  # guards _vocab and _formatter; tokenizing
        self._vocab: Any = None
        self._formatter: Any = None
        self._rates: collections.deque[tuple[int, float]] = collections.deque(maxlen=RATE_WINDOW)
        forget_in_child(self)

    def _after_fork_in_child(self) -> None:
        # The generations under way are the parent's threads: their model state is half
        # written (left unused, loaded again on first use) and their count would keep close()
        # waiting forever; the locks they held stay held.
        if self._in_use:
            _INHERITED.append(self._llm)
            self._llm = None
        self._in_use, self._timer = 0, None
        self._state = threading.Lock()
        self._idle = threading.Condition(self._state)
        self._vocab_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalModel({self.name!r}, {str(self.path)!r}, loaded={self.loaded})"

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    @property
    def closed(self) -> bool:
        """Closed or closing: a running generation stops at its next token."""
        return self._closed

    # --- tokens ------------------------------------------------------------------------

    def _tokenizer(self) -> Any:
        """The vocabulary-only model (a few MB, about 60 ms to load, no context); call with
        _vocab_lock. ``tokenize(text: bytes, add_bos, special) -> list[int]``."""
        if self._closed:  # (closed, the tokenizer stays unloaded)
            raise ModelClosed(f"{self.name} was closed")
        if self._vocab is None:
            import llama_cpp
            from llama_cpp._internals import LlamaModel

            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            with _quiet_llama():
                self._vocab = LlamaModel(path_model=str(self.path), params=params, verbose=False)
        return self._vocab

    def load_tokenizer(self) -> None:
        with self._vocab_lock:
            self._tokenizer()
            self._chat_formatter()

    def _chat_formatter(self) -> Any:
        if self._formatter is None and self.info.chat_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(
                template=self.info.chat_template, eos_token=self.info.eos_token or "",
                bos_token=self.info.bos_token or "", add_generation_prompt=True)
        return self._formatter

    def prompt_tokens(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """The prompt as the model sees it: ``(role, content)`` pairs rendered with the file's
        chat template and tokenized with its own tokenizer (special tokens included)."""
        with self._vocab_lock:
            fmt = self._chat_formatter()
            tok = self._tokenizer()
            if fmt is not None:
                res = fmt(messages=[{"role": r, "content": c} for r, c in messages])
                return list(tok.tokenize(res.prompt.encode(), not res.added_special, True))
            # No chat template (a base model): plain "role: content" lines.
            text = "".join(f"{r}: {c}\n" for r, c in messages) + "assistant:"
            return list(tok.tokenize(text.encode(), True, False))

    def count_text(self, text: str) -> int:
        """Tokens of plain ``text`` (an answer): no BOS, special-token text taken literally."""
        with self._vocab_lock:
            return len(self._tokenizer().tokenize(text.encode(), False, False))

    # --- loading -----------------------------------------------------------------------

    def acquire(self) -> Llama:
        """The loaded model, loading it if needed; pair with :meth:`release`. Worker thread."""
        with self._state:
            if self._closed:
                raise ModelClosed(f"{self.name} was closed")
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._llm is None:
                from llama_cpp import Llama

                plain_buffers = _check_build()
                s = self.settings
                kw: dict[str, Any] = {}
                if s.seed is not None:
                    kw["seed"] = s.seed
                t0 = time.perf_counter()
                try:
                    with _quiet_llama(), (_without_extra_buffers() if plain_buffers
                                          else contextlib.nullcontext()):
                        self._llm = Llama(str(self.path), n_ctx=s.n_ctx, n_threads=s.n_threads,
                                          n_threads_batch=s.n_threads, n_batch=s.n_batch,
                                          verbose=False, **kw)
                except (ValueError, RuntimeError, OSError) as exc:
                    raise ModelLoadError(f"cannot load {self.path}: {exc}") from exc
                self.loads += 1
                log.info("loaded %s in %.2fs", self.path.name, time.perf_counter() - t0)
            self._in_use += 1
            return self._llm

    def release(self) -> None:
        with self._state:
            self._in_use -= 1
            self._last_used = time.monotonic()
            if self._in_use == 0:
                self._idle.notify_all()
            idle = self.settings.idle_unload_s
            if self._in_use == 0 and idle is not None and not self._closed:
                self._timer = threading.Timer(idle, self._unload_if_idle)
                self._timer.daemon = True
                self._timer.start()

    def _unload_if_idle(self) -> None:
        idle = self.settings.idle_unload_s
        with self._state:
            if (self._in_use == 0 and self._llm is not None and idle is not None
                    and time.monotonic() - self._last_used >= idle * 0.99):
                self._drop()
                log.info("unloaded %s after %.0fs idle", self.path.name, idle)

    def _drop(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def close(self) -> None:
        """Unload the model and the tokenizer. A running generation is told to stop (it ends
        with :class:`ModelClosed` within a token) and waited for: freeing the weights under
        it crashed the process (heap corruption in llama.cpp)."""
        with self._state:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            while self._in_use:
                self._idle.wait()
            self._drop()
        with self._vocab_lock:
            vocab, self._vocab = self._vocab, None
            if vocab is not None:
                vocab.close()

    # --- live statistics ---------------------------------------------------------------

    def record_rate(self, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:
            self._rates.append((tokens, seconds))

    @property
    def tokens_per_s(self) -> float | None:
        rates = list(self._rates)
        seconds = sum(s for _, s in rates)
        return sum(n for n, _ in rates) / seconds if seconds > 0 else None


class Generation:
    """One generation on a loaded model, driven step by step from a worker thread.

    :meth:`step` returns the next piece of text ("" while a multi-byte character or a
    possible stop string is incomplete) or None once finished. ``is_cancelled`` is polled
    between tokens and, while the prompt is processed, from llama.cpp's abort callback; when
    it says yes, :meth:`step` raises :class:`GenerationInterrupted`. :meth:`close` always
    runs last and releases the model.
    """

    def __init__(self, model: LocalModel, prompt: list[int], max_tokens: int, *,
                 temperature: float | None, stop: Sequence[str],
                 is_cancelled: Callable[[], bool], top_p: float | None = None,
                 seed: int | None = None, grammar: str | None = None) -> None:
        self.model, self.prompt, self.max_tokens = model, prompt, max_tokens
        self.temperature = 0.8 if temperature is None else float(temperature)
        self.top_p = 0.95 if top_p is None else float(top_p)
        self.seed, self.grammar = seed, grammar
        self.stop = tuple(s for s in stop if s)
        self.is_cancelled = is_cancelled
        self.output_tokens = 0
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self.started = time.perf_counter()
        self._text = ""
        self._emitted = 0
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._llm: Llama | None = None
        self._gen: Any = None
        self._piece_buf = ctypes.create_string_buffer(64)
        self._abort_cb: Any = None
        self._aborted = False

    def _set_abort(self, on: bool) -> None:
        import llama_cpp

        assert self._llm is not None
        if on:
            cancelled, model = self.is_cancelled, self.model

            def abort(_data: Any) -> bool:
                if cancelled() or model.closed:
                    self._aborted = True
                    return True
                return False

            self._abort_cb = llama_cpp.ggml_abort_callback(abort)  # keep a reference
            llama_cpp.llama_set_abort_callback(self._llm._ctx.ctx, self._abort_cb, None)
        else:
            llama_cpp.llama_set_abort_callback(self._llm._ctx.ctx, llama_cpp.ggml_abort_callback(), None)
            self._abort_cb = None

    def start(self) -> None:
        """Take the model (loading it if needed) and set up the token generator."""
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        self._llm = self.model.acquire()
        self._set_abort(True)
        # The sampler takes the model's seed when generate() builds it: set it every time, so
        # one request's seed never carries over to the next (the configured seed, else random).
        seed = self.seed if self.seed is not None else self.model.settings.seed
        self._llm.set_seed(llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed)
        grammar = LlamaGrammar.from_string(self.grammar, verbose=False) if self.grammar else None
        self._gen = self._llm.generate(
            self.prompt, top_k=40, top_p=self.top_p, min_p=0.05, temp=self.temperature,
            repeat_penalty=1.0, grammar=grammar)

    def _is_eog(self, token: int) -> bool:
        import llama_cpp

        assert self._llm is not None
        return bool(llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token))

    def step(self) -> str | None:
        if self.finish_reason is not None:
            return None
        if self._gen is None:
            self.start()
        if self.output_tokens >= self.max_tokens:
            return self._finish("length")
        if self.first_token_at is not None and self.is_cancelled():
            raise GenerationInterrupted
        if self.model.closed:
            raise ModelClosed(f"{self.model.name} was closed during the generation")
        try:
            token = next(self._gen)
        except StopIteration:
            return self._finish("stop")
        except RuntimeError:
            if self._aborted:
                if not self.is_cancelled() and self.model.closed:
                    raise ModelClosed(f"{self.model.name} was closed while it read the prompt") from None
                raise GenerationInterrupted from None
            raise
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
            self._set_abort(False)  # per-node callbacks would slow decoding down
        if self._is_eog(token):
            return self._finish("stop")
        self.output_tokens += 1
        assert self._llm is not None
        self._text += self._decoder.decode(self._piece(token))
        return self._emit(final=False)

    def _piece(self, token: int) -> bytes:
        """The bytes of ``token``'s text (special tokens as nothing). Not ``Llama.detokenize``:
        in llama-cpp-python 0.3.36 it reads a token into 32 bytes and returns nothing for a
        longer one, so text vanished (SmolLM2 has 47 such tokens: runs of dashes, of ``#``, an
        indented line's whitespace). llama.cpp says how much room a longer piece needs."""
        import llama_cpp

        assert self._llm is not None
        vocab, buf = self._llm._model.vocab, self._piece_buf
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
        if n < 0:  # -n bytes needed
            buf = self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    def _emit(self, *, final: bool) -> str:
        if self.stop:
            start = max(0, self._emitted - self._hold)
            cut = min((i for i in (self._text.find(s, start) for s in self.stop) if i >= 0), default=-1)
            if cut >= 0:
                self._text = self._text[:cut]
                self.finish_reason = "stop"
                final = True
        end = len(self._text) if final else max(self._emitted, len(self._text) - self._hold)
        piece = self._text[self._emitted:end]
        self._emitted = end
        return piece

    def _finish(self, reason: str) -> str:
        self._text += self._decoder.decode(b"", final=True)
        self.finish_reason = reason
        return self._emit(final=True)

    def run(self) -> str:
        """Generate to the end in this thread; the whole text."""
        parts: list[str] = []
        while (piece := self.step()) is not None:
            parts.append(piece)
        return "".join(parts)

    @property
    def text(self) -> str:
        return self._text[:self._emitted]

    @property
    def began(self) -> bool:
        """Whether the generation took the model (and so may have read its prompt)."""
        return self._gen is not None

    def close(self) -> None:
        """Stop the generator and release the model; after an interrupted prompt, reset the
        model's state so the next request starts clean."""
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        try:
            if self._gen is not None:
                self._gen.close()
            if self._abort_cb is not None:
                self._llm = llm
                self._set_abort(False)
                self._llm = None
            if self._aborted or self.finish_reason is None:
                llm.reset()
        finally:
            if self.first_token_at is not None:
                self.model.record_rate(max(self.output_tokens - 1, 0),
                                       time.perf_counter() - self.first_token_at)
            self.model.release()
