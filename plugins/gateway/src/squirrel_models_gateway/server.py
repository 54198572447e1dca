"""Running the gateway: build it from a configuration, serve it with uvicorn, stop it cleanly.

:func:`build` makes the manager (with a Prometheus registry for ``/metrics``) and the app;
:func:`serve` runs it until SIGINT/SIGTERM (``squirrel serve``); :class:`GatewayThread` runs
it in a background thread on 127.0.0.1 (tests, notebooks, benchmarks).

Shutdown: uvicorn stops accepting connections and waits up to ``shutdown_timeout`` for the
requests in flight; then the app's lifespan waits for them to be settled (a stream cut by the
shutdown is settled for what it used) and closes the manager, so nothing stays reserved.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from squirrel_models import Config, ModelManager
from squirrel_models.config import load_config
from squirrel_models.errors import ConfigError, SquirrelError

from .access import log_to_stderr, silence_uvicorn_access
from .app import create_app
from .config import GatewayConfig, load_gateway_config

__all__ = ["GatewayThread", "build", "serve"]

log = logging.getLogger("squirrel_models.gateway")


def _metrics(config: Config, gateway: GatewayConfig) -> tuple[Any, Any]:
    """(meter provider, Prometheus registry) for ``/metrics``; (None, None) when the gateway
    serves no metrics or ``[telemetry]`` exports them itself."""
    if not gateway.metrics or config.telemetry.enabled:
        return None, None
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    # the service name [telemetry] documents (default "squirrel-models"), not the SDK's
    # "unknown_service:python3"
    resource = Resource.create({"service.name": config.telemetry.service_name})
    return MeterProvider(metric_readers=[reader], resource=resource), registry


def build(config: Config | Mapping[str, Any], *, plugins: Any = None,
          host: str | None = None, port: int | None = None) -> tuple[Any, GatewayConfig]:
    """``(app, gateway config)`` for ``config`` (its ``[gateway]`` table, ``host`` and
    ``port`` overriding it). Raises :class:`ConfigError` naming a bad field."""
    cfg = load_config(config)
    gateway = load_gateway_config(cfg.gateway)
    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if changes:
        try:
            gateway = attrs.evolve(gateway, **changes)
        except ConfigError as exc:
            raise ConfigError(str(exc).split(": ", 1)[-1], field=f"--{exc.field}") from None
    meter_provider, registry = _metrics(cfg, gateway)
    manager = ModelManager(cfg, plugins=plugins, meter_provider=meter_provider)
    if registry is None and manager.telemetry is not None:
        registry = getattr(manager.telemetry, "_registry", None)  # [telemetry]'s Prometheus one
    app = create_app(manager, gateway, registry=registry, meter_provider=meter_provider
                     or (manager.telemetry.meter_provider if manager.telemetry else None))
    return app, gateway


#: How long an idle client connection is kept between requests: longer than the clients'
#: own idle expiry (httpx's, so the official openai SDK's, is 5 s; aiohttp's 15 s). At
#: uvicorn's default of 5 s, the same as the SDK's, a request sent as the gateway closed the
#: idle connection met the close and failed as a connection error. A connection that sends
#: nothing is still dropped after ``header_timeout`` (protocol.py).
KEEP_ALIVE_S = 20


def _uvicorn_config(app: Any, gateway: GatewayConfig, **kw: Any) -> Any:
    import uvicorn

    from .protocol import bounded_protocol

    silence_uvicorn_access()

    return uvicorn.Config(app, host=gateway.host, port=gateway.port, lifespan="on",
                          timeout_graceful_shutdown=int(max(1, gateway.shutdown_timeout)),
                          # uvicorn's line shows the query string a client may put its key
                          # in: the app writes its own (access.py)
                          access_log=False, server_header=False,
                          # The client address a trusted proxy sends (X-Forwarded-For from
                          # FORWARDED_ALLOW_IPS, 127.0.0.1 by default) is read only by the
                          # access log: without it, uvicorn's middleware copied every
                          # request's headers for nothing.
                          proxy_headers=gateway.access_log,
                          # a request head's time and size bounded (protocol.py)
                          http=bounded_protocol(gateway.header_timeout),
                          # no route is a WebSocket: an Upgrade header made uvicorn hand the
                          # connection to the websockets library (a second protocol parser
                          # reachable without a key) for an empty plain-text 403
                          ws="none", **{"timeout_keep_alive": KEEP_ALIVE_S, **kw})


def bound_port(server: Any, default: int) -> int:
    """The port a started ``uvicorn.Server`` listens on (the one the system chose for port
    0); ``default`` before it listens."""
    for s in getattr(server, "servers", None) or []:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    return default


def base_url(host: str, port: int) -> str:
    """``http://host:port/v1``, an IPv6 address in brackets."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def _announcing_server(config: Any, gateway: GatewayConfig,
                       announce: Callable[[str], None] | None) -> Any:
    """A ``uvicorn.Server`` that calls ``announce`` with its base URL once it listens: not
    before (a port in use would have been announced, then refused), and with the real port
    (``port = 0`` announced ``:0``)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and announce is not None:
                announce(base_url(gateway.host, bound_port(self, gateway.port)))

        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets=sockets)
            if self.force_exit:
                await close_on_force_exit(self)

    return Server(config)


#: The longest a second Ctrl-C lets the requests in flight settle and the manager close.
FORCE_CLOSE_TIMEOUT = 5.0


async def close_on_force_exit(server: Any, timeout: float = FORCE_CLOSE_TIMEOUT) -> None:
    """After a second Ctrl-C ("force quit"), uvicorn skips the app's lifespan shutdown: the
    manager then closed only as a side effect of ``asyncio.run`` cancelling the lifespan still
    waiting, which was logged as an error with a traceback, and with no bound. Here the
    requests still in flight are cancelled (each settles or releases what it holds, as at the
    end of ``shutdown_timeout``) and the lifespan shutdown runs (the manager closes: budget
    slices handed back, stores closed), waited for ``timeout`` seconds at most (a store call
    already running in a worker thread still ends by its own timeout before the process
    exits)."""
    import asyncio

    for task in server.server_state.tasks:
        task.cancel(msg="Task cancelled, forced shutdown")
    try:
        async with asyncio.timeout(timeout):
            await server.lifespan.shutdown()
    except TimeoutError:
        log.error("the manager did not close within %g s of the second Ctrl-C: what it still "
                  "held is released when its leases expire", timeout)


class _StartupErrorRaisedInstead(logging.Filter):
    """Drops uvicorn's log of the traceback of a start-up that failed with a
    :class:`SquirrelError` (a store that stayed locked past its timeout, an alias naming no
    model): ``serve`` and :class:`GatewayThread` raise that error, which the CLI prints as one
    line. The traceback of any other failure is kept (it is a bug to report)."""

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway

    def filter(self, record: logging.LogRecord) -> bool:
        error = self.gateway.startup_error
        if not isinstance(error, SquirrelError):
            return True
        text = record.getMessage()
        return not (text.startswith("Traceback") and str(error) in text)


@contextlib.contextmanager
def _startup_error_raised_instead(app: Any) -> Iterator[None]:
    quiet = _StartupErrorRaisedInstead(app.state.gateway)
    logger = logging.getLogger("uvicorn.error")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def serve(config: Config | Mapping[str, Any], *, plugins: Any = None, host: str | None = None,
          port: int | None = None, announce: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully. ``announce`` is called with
    the base URL once the server listens (with the port the system chose for port 0)."""
    app, gateway = build(config, plugins=plugins, host=host, port=port)
    if gateway.access_log:
        log_to_stderr()
    server = _announcing_server(_uvicorn_config(app, gateway, log_config=None), gateway, announce)
    try:
        with _startup_error_raised_instead(app):
            server.run()
    except SystemExit:  # uvicorn's way of saying the start-up failed
        pass
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled once its graceful shutdown is done: the
        # documented way to stop, not an abort (the CLI said "Aborted!" and exited 1).
        if not server.started:
            raise
    if not server.started:
        error = app.state.gateway.startup_error
        if isinstance(error, SquirrelError):
            raise error
        raise SquirrelError(f"the gateway could not start on {gateway.host}:{gateway.port} "
                            "(see the log above)")


class GatewayThread:
    """The gateway served by uvicorn in a background thread (its own event loop), on
    ``gateway.host`` and a free port when ``gateway.port`` is 0::

        with GatewayThread(app, gateway_config) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key=key)
    """

    def __init__(self, app: Any, gateway: GatewayConfig, **uvicorn_options: Any) -> None:
        import uvicorn

        self.app, self.gateway = app, gateway
        self.server = uvicorn.Server(_uvicorn_config(app, gateway, log_config=None, **uvicorn_options))
        self.thread = threading.Thread(target=self._run, name="squirrel-gateway", daemon=True)

    def _run(self) -> None:
        try:
            with _startup_error_raised_instead(self.app):
                self.server.run()
        except SystemExit:  # a failed start-up: start() raises its error
            pass

    @property
    def port(self) -> int:
        return bound_port(self.server, self.gateway.port)

    @property
    def base_url(self) -> str:
        return base_url(self.gateway.host, self.port)

    def start(self, timeout: float = 30.0) -> GatewayThread:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                self.stop()
                error = self.app.state.gateway.startup_error
                if isinstance(error, SquirrelError):
                    raise error
                raise SquirrelError("the gateway did not start (see the log)")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown: in-flight requests finish or are settled, then the manager closes."""
        self.server.should_exit = True
        self.thread.join(timeout if timeout is not None else self.gateway.shutdown_timeout + 10)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
