"""The ``command`` provider: a local command-line program used as a model.

One attempt is one run of the program: the prompt goes to its standard input (or into its
arguments), the answer is what it writes to standard output, read as it arrives. The program
has no tokenizer we could ask, so usage is the core's upper bound (UTF-8 bytes) and is marked
``estimated``; with ``enforce_max_tokens`` the answer is cut at the attempt's output budget,
counted the same way, so the usage never exceeds what the core reserved.

Errors are mapped at one boundary (:meth:`CommandProvider._run`): a non-zero exit is a
:class:`~squirrel_models.ServerError` carrying the tail of standard error, a run that outlives
``timeout`` a :class:`~squirrel_models.ProviderTimeout`, a program that cannot start a
:class:`~squirrel_models.ProviderConnectionError`. Cancelling an attempt kills the program's
whole process group.
"""

from __future__ import annotations

import codecs
import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import ExitStack, aclosing
from typing import IO, Any

import anyio
import attrs
from anyio.abc import Process
from squirrel_models import (
    AIRequest,
    ConfigError,
    InvalidRequest,
    InvalidRequestError,
    MidStreamError,
    ModelCard,
    ModelError,
    ProviderConnectionError,
    ProviderResponse,
    ProviderSpec,
    ProviderTimeout,
    Secret,
    ServerError,
    StreamChunk,
    Usage,
)
from squirrel_models.secrets import redact
from squirrel_models.simple import refuse_unsupported
from squirrel_models.tokens import upper_bound

from .options import CommandOptions

__all__ = ["FEATURES", "TYPE_NAME", "CommandProvider", "render_prompt"]

TYPE_NAME = "command"
#: What every command model supports; ``[[providers.models]]`` may override it.
FEATURES = frozenset({"streaming", "system_prompt", "stop"})
#: The request fields a program honours (the output is cut here); any other is refused.
SUPPORTS = frozenset({"max_tokens", "stop"})
STDERR_TAIL = 1000  # bytes of standard error quoted in an error message
READ_SIZE = 65536
REAP_TIMEOUT = 5.0
POSIX = os.name == "posix"
#: Dropped from a program's file name to name its default model (``run.sh`` serves ``run``).
SCRIPT_SUFFIXES = (".exe", ".bat", ".cmd", ".sh", ".py")


def render_prompt(request: AIRequest, prompt_format: str) -> str:
    """The text the program receives for ``request``."""
    # m.text, not m.content: a message's content may be a tuple of text parts (a TypeError here)
    if prompt_format == "json":
        return json.dumps([{"role": m.role, "content": m.text} for m in request.messages],
                          ensure_ascii=False)
    if prompt_format == "transcript":
        return "\n".join(f"{m.role}: {m.text}" for m in request.messages) + "\n"
    return "\n\n".join(m.text for m in request.messages)


def output_budget(model: ModelCard, request: AIRequest) -> int:
    """The most output an attempt may produce: the same bound the core reserves for."""
    room = max(model.context_window - upper_bound(request).tokens, 1)
    return min(request.max_tokens or model.output_limit, model.output_limit, room)


@attrs.define
class _Output:
    """Decodes the program's output and ends the answer at a stop sequence or the byte limit.

    A tail that could be the start of a stop sequence is held back until the next read
    settles it, so a stop sequence split across two reads is still found. One final newline
    (what ``print`` and ``echo`` add) is dropped.
    """

    limit: int | None
    stops: tuple[str, ...]
    parts: list[str] = attrs.field(factory=list)
    used: int = 0
    finish_reason: str | None = None
    _pending: str = ""
    _decoder: Any = attrs.field(factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, data: bytes, *, final: bool = False) -> str:
        """The text to pass on for ``data``; sets ``finish_reason`` when the answer ends here."""
        if self.finish_reason is not None:
            return ""
        buf = self._pending + self._decoder.decode(data, final)
        self._pending = ""
        cuts = [i for i in (buf.find(s) for s in self.stops if s) if i >= 0]
        if cuts:
            buf, self.finish_reason = buf[:min(cuts)], "stop"
        elif final:
            buf = buf.removesuffix("\n")  # the newline print() and echo end with
        else:
            hold = self._holdback(buf)
            if hold:
                buf, self._pending = buf[:-hold], buf[-hold:]
        return self._emit(buf)

    def _holdback(self, buf: str) -> int:
        best = 1 if buf.endswith("\n") else 0  # may be the last character of the output
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def _emit(self, text: str) -> str:
        data = text.encode()
        if self.limit is not None and self.used + len(data) > self.limit:
            data = data[:self.limit - self.used]
            text = data.decode("utf-8", "ignore")  # never split a character
            data = text.encode()
            self.finish_reason = "length"
        self.used += len(data)
        if text:
            self.parts.append(text)
        return text


def _which(program: str, cwd: str | None, path: str | None) -> str | None:
    """The absolute path of ``program`` as the child would run it, or None."""
    if os.sep in program or (os.altsep and os.altsep in program):
        if cwd is not None and not os.path.isabs(program):
            program = os.path.join(cwd, program)
        found = shutil.which(program)
    else:
        found = shutil.which(program, path=path)
    return os.path.abspath(found) if found else None


def _kill(process: Process) -> None:
    """Kill the program and anything it started (it leads its own process group)."""
    try:
        if POSIX:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:
        pass


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _stderr_tail(f: IO[bytes]) -> str:
    size = os.fstat(f.fileno()).st_size
    f.seek(max(0, size - STDERR_TAIL))
    tail = f.read().decode("utf-8", "replace").strip()
    if size > STDERR_TAIL:
        tail = "..." + tail
    return redact(tail)


def _with_usage(error: ModelError, usage: Usage | None) -> ModelError:
    # The core charges what a failed attempt used when the error carries ``usage``.
    if usage is not None:
        error.usage = usage
    return error


@attrs.define
class CommandProvider:
    """One ``[[providers]]`` entry of type ``command``. Build it with :meth:`from_spec`."""

    name: str
    options: CommandOptions
    models: tuple[ModelCard, ...]
    argv: Mapping[str, tuple[str, ...]]
    env: Mapping[str, Secret] = attrs.field(factory=dict)
    running: Counter[str] = attrs.field(factory=Counter)
    _processes: set[Process] = attrs.field(factory=set, repr=False)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: ProviderSpec) -> CommandProvider:
        """Build the provider from configuration; a program that cannot be found is a
        :class:`~squirrel_models.ConfigError` now, at start-up, not at the first request."""
        opts: CommandOptions = spec.options
        where = f"providers.{spec.name}"
        stem, suffix = os.path.splitext(os.path.basename(opts.command[0]))
        default = stem if suffix.lower() in SCRIPT_SUFFIXES else stem + suffix
        names = [m.name for m in spec.models]
        if not names and spec.discover:
            if "{model}" in default:
                raise ConfigError("the command uses {model}: declare the models with "
                                  "[[providers.models]]", field=f"{where}.models")
            names = [default]
        for model in opts.commands:
            if model not in names:
                raise ConfigError(f"no model {model!r} is declared in [[providers.models]]",
                                  field=f"{where}.options.commands.{model}")

        env = {k: Secret(v) for k, v in opts.env.items()}
        search_path = opts.env.get("PATH", os.environ.get("PATH"))
        argv: dict[str, tuple[str, ...]] = {}
        cards: list[ModelCard] = []
        for i, model in enumerate(names):
            field = (f"{where}.options.commands.{model}" if model in opts.commands
                     else f"{where}.options.command")
            args = tuple(a.replace("{model}", model) for a in opts.commands.get(model, opts.command))
            program = _which(args[0], opts.cwd, search_path)
            if program is None:
                raise ConfigError(f"program {args[0]!r} not found or not executable", field=field)
            argv[model] = (program, *args[1:])
            card = ModelCard.for_provider(spec.name, model, provider_type=TYPE_NAME,
                                          features=FEATURES)
            override = next((m for m in spec.models if m.name == model), None)
            if override is not None:
                try:
                    card = override.apply(card)
                except InvalidRequest as exc:
                    raise ConfigError(str(exc).removeprefix(f"{exc.field}: "),
                                      field=f"{where}.models[{i}].{exc.field}") from None
            cards.append(card)
        return cls(spec.name, opts, tuple(cards), argv, env)

    # --- the provider contract ------------------------------------------------------------

    async def list_models(self) -> Sequence[ModelCard]:
        return list(self.models)

    def live_stats(self, model: ModelCard) -> Mapping[str, float]:
        """Runs in progress for ``model``: the latency rule ranks a busy program lower."""
        return {"queue_depth": float(self.running[model.model])}

    async def complete(self, model: ModelCard, request: AIRequest) -> ProviderResponse:
        parts: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        async with aclosing(self._run(model, request)) as chunks:
            async for chunk in chunks:
                parts.append(chunk.text)
                usage = chunk.usage or usage
                finish = chunk.finish_reason or finish
        assert usage is not None  # _run always ends with a usage chunk
        return ProviderResponse("".join(parts), usage, finish, model.model)

    async def stream(self, model: ModelCard, request: AIRequest) -> AsyncIterator[StreamChunk]:
        sent: list[str] = []
        async with aclosing(self._run(model, request)) as chunks:
            try:
                async for chunk in chunks:
                    sent.append(chunk.text)
                    yield chunk
            except ModelError as exc:
                if not "".join(sent):
                    raise  # nothing reached the caller: the core may still fall back
                raise MidStreamError(str(exc), partial_text="".join(sent),
                                     usage=getattr(exc, "usage", None), model_id=model.id,
                                     provider=self.name) from exc

    async def aclose(self) -> None:
        for process in list(self._processes):
            await self._reap(process)

    # --- one run of the program -----------------------------------------------------------

    def _command(self, args: tuple[str, ...], prompt: str, budget: int) -> list[str]:
        out = [a.replace("{max_tokens}", str(budget)) for a in args]
        if self.options.prompt_via == "argument":
            if any("{prompt}" in a for a in out[1:]):
                out = [out[0], *(a.replace("{prompt}", prompt) for a in out[1:])]
            else:
                out.append(prompt)
        return out

    async def _spawn(self, model: ModelCard, argv: list[str], stdin: Any, stderr: IO[bytes]
                     ) -> Process:
        env = ({**os.environ, **{k: v.reveal() for k, v in self.env.items()}}
               if self.env else None)
        try:
            # Shielded: a start cancelled half-way leaves the program to asyncio, which
            # kills it alone (not its group) and reaps it after we returned. Starting is
            # short; the caller's next await sees the cancellation and _reap ends the program.
            # (returned after the block: a cancel scope may swallow what ends it, says mypy)
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(argv, stdin=stdin, stdout=subprocess.PIPE,
                                                   stderr=stderr, cwd=self.options.cwd, env=env,
                                                   start_new_session=POSIX)
        except ValueError as exc:  # a NUL character cannot be passed in an argument
            raise InvalidRequestError(f"the prompt cannot be passed as an argument: {exc}",
                                      status_code=400) from exc
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise InvalidRequestError('the prompt is too long for an argument; use '
                                          'prompt_via = "stdin"', status_code=400) from exc
            raise ProviderConnectionError(
                f"could not start {os.path.basename(argv[0])}: {exc.strerror or exc}") from exc
        return process

    async def _reap(self, process: Process) -> None:
        """Kill the program if it still runs and wait for it, even while being cancelled."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(REAP_TIMEOUT):
            if process.returncode is None:
                _kill(process)
            await process.wait()
            await process.aclose()
        self._processes.discard(process)

    async def _run(self, model: ModelCard, request: AIRequest) -> AsyncGenerator[StreamChunk, None]:
        """Run the program once and yield its answer; the last chunk carries usage.

        Errors are plain :class:`ModelError` subclasses carrying the usage received so far;
        :meth:`stream` turns one raised after the first chunk into a ``MidStreamError``.
        """
        args = self.argv.get(model.model)
        if args is None:
            raise InvalidRequestError(f"model {model.model!r} is not served by {self.name!r}",
                                      status_code=404, model_id=model.id, provider=self.name)
        # The program honours max_tokens and stop (cut here); tools and sampling settings
        # would be dropped, which answers another question: refused, naming the field.
        refuse_unsupported(model, request, SUPPORTS, provider=self.name)
        prompt = render_prompt(request, self.options.prompt_format)
        # What was sent is bounded by the request's upper bound or, for a rendering longer
        # than the messages (json), by its own bytes: report the larger, never less.
        prompt_tokens = max(upper_bound(request).tokens, len(prompt.encode()))
        budget = output_budget(model, request)
        out = _Output(budget if self.options.enforce_max_tokens else None, request.stop)
        program = os.path.basename(args[0])
        timeout = self.options.timeout
        deadline = anyio.current_time() + timeout

        def usage() -> Usage:
            return Usage(prompt_tokens, upper_bound(text=out.text).tokens, source="estimated")

        # Files, not pipes, for stdin and stderr: a program that writes a lot of log output
        # (llama.cpp does) or reads its input slowly can never block on us. Both are small
        # writes and reads to the page cache, so doing them inline does not stall the loop.
        with ExitStack() as files:
            stderr = files.enter_context(tempfile.TemporaryFile())
            stdin: Any = subprocess.DEVNULL
            if self.options.prompt_via == "stdin":
                stdin = files.enter_context(tempfile.TemporaryFile())
                stdin.write(prompt.encode())
                stdin.seek(0)
            process = await self._spawn(model, self._command(args, prompt, budget), stdin,
                                        stderr)
            self._processes.add(process)
            self.running[model.model] += 1
            try:
                assert process.stdout is not None
                while out.finish_reason is None:
                    try:
                        with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                            data = await process.stdout.receive(READ_SIZE)
                    except anyio.EndOfStream:
                        data = b""
                    except TimeoutError:
                        raise _with_usage(ProviderTimeout(
                            f"{program} gave no complete answer within timeout={timeout:g}s"),
                            usage()) from None
                    text = out.feed(data, final=not data)
                    if text:
                        yield StreamChunk(text)
                    if not data:
                        break
                if out.finish_reason is None:  # the program closed its output: did it succeed?
                    try:
                        with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                            code = await process.wait()
                    except TimeoutError:
                        raise _with_usage(ProviderTimeout(
                            f"{program} did not exit within timeout={timeout:g}s"),
                            usage()) from None
                    if code != 0:
                        tail = _stderr_tail(stderr)
                        raise _with_usage(ServerError(
                            f"{program} {_describe_exit(code)}" + (f": {tail}" if tail else "")),
                            usage())
                    out.finish_reason = "stop"
                else:
                    _kill(process)  # a stop sequence or the output budget ended the answer
            finally:
                self.running[model.model] -= 1
                await self._reap(process)
        yield StreamChunk("", usage(), out.finish_reason)
