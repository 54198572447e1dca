"""Sessions: one test session per distribution (installed alone), integration, lint, types,
docs, benchmarks and the demo. Run ``./nox -l`` to list them; ``./nox`` runs the defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "tools"))

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

PYTHON = "3.11"
TEST_DEPS = ["pytest>=8.3", "hypothesis>=6.100", "trio>=0.26", "opentelemetry-sdk>=1.27",
             "anyio>=4.4"]
#: distribution id -> (folder, test folder, needs llama-cpp-python)
DISTS = {
    "core": ("core", "tests/core", False),
    "sqlite-budget": ("plugins/sqlite-budget", "tests/sqlite_budget", False),
    "openai": ("plugins/openai", "tests/openai", True),
    "llama-local": ("plugins/llama-local", "tests/llama_local", True),
    "huggingface": ("plugins/huggingface", "tests/huggingface", True),
    "postgres-budget": ("plugins/postgres-budget", "tests/postgres_budget", False),
    "redis": ("plugins/redis", "tests/redis", False),
    "gateway": ("plugins/gateway", "tests/gateway", True),
}
#: other distributions a test session needs beside its own (benchmarks compare backends)
TEST_WITH = {"postgres-budget": ("sqlite-budget",),
             # the gateway's tests route through the openai plugin to real servers
             "gateway": ("openai", "sqlite-budget")}
#: optional dependencies a distribution's tests exercise (core: the [telemetry] exporters;
#: msgspec: the [fast] extra's JSON, whose absence the tests simulate; the openai plugin
#: depends on it)
TEST_EXTRAS = {"core": ("opentelemetry-exporter-prometheus>=0.66b0", "prometheus-client>=0.20",
                        "opentelemetry-exporter-otlp-proto-http>=1.27", "msgspec>=0.18")}
PRESENT = [d for d, (folder, tests, _) in DISTS.items()
           if (ROOT / folder / "pyproject.toml").exists() and (ROOT / tests).exists()]


def install(session: nox.Session, *dists: str, extra: tuple[str, ...] = ()) -> None:
    """Install core, the given distributions (editable) and the test tools; llama-cpp-python
    from the wheel built once by tools/llama_wheel.py."""
    if any(DISTS[d][2] for d in dists if d in DISTS):
        import llama_wheel

        wheel = llama_wheel.ensure_wheel()
        # A venv made with another build (see tools/llama_wheel.py) must not keep it.
        session.install("--reinstall-package", "llama-cpp-python", str(wheel))
        session.env["UV_FIND_LINKS"] = str(wheel.parent)
    args = ["-e", "core"]
    for d in dists:
        if d != "core":
            folder = DISTS[d][0]
            # A plugin's [test] extra holds what only its tests need (a real server, say).
            has_test_extra = "test =" in (ROOT / folder / "pyproject.toml").read_text()
            args += ["-e", f"{folder}[test]" if has_test_extra else folder]
    session.install(*args, *TEST_DEPS, *extra)


#: Where the test processes keep compiled bytecode. The machine sets PYTHONDONTWRITEBYTECODE=1
#: and uv installs no .pyc, so without this every Python the tests start (pytest itself, CLI
#: runs, worker processes, servers) compiles all it imports from source again: 5 s for
#: transformers alone. One folder under .nox, out of the source tree, shared by the sessions.
PYCACHE = ROOT / ".nox" / "pycache"


def run_pytest(session: nox.Session, *paths: str) -> None:
    session.run("python", "-m", "pytest", *paths, *session.posargs,
                env={"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(PYCACHE)})


@nox.session(python=PYTHON)
@nox.parametrize("dist", PRESENT, ids=PRESENT)
def tests(session: nox.Session, dist: str) -> None:
    """Test one distribution installed alone with its own dependencies."""
    install(session, dist, *TEST_WITH.get(dist, ()), extra=TEST_EXTRAS.get(dist, ()))
    run_pytest(session, DISTS[dist][1])


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Test compositions of core with every plugin installed together."""
    if not (ROOT / "tests/integration").is_dir():
        session.skip("no tests/integration yet")
    install(session, *PRESENT)
    run_pytest(session, "tests/integration")


@nox.session(python=PYTHON)
def reliability(session: nox.Session) -> None:
    """Faults, load, cancellation, crashes, bad input and secrets against the whole composition."""
    if not (ROOT / "tests/reliability").is_dir():
        session.skip("no tests/reliability yet")
    install(session, *PRESENT)
    run_pytest(session, "tests/reliability")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the whole repository."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on core."""
    # msgspec: the [fast] extra, checked with its own type hints
    session.install("-e", "core", "mypy>=1.11", "opentelemetry-sdk>=1.27", "pytest>=8.3",
                    "msgspec>=0.18")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Docs checks: every hookspec documented, the tutorial plugin installs and is discovered."""
    # sqlite-budget: the quick start's durable budget, run as the page shows it
    # ruff, mypy: what `squirrel plugin new` writes passes the linters its pyproject configures
    session.install("-e", "core", "-e", "docs/example-plugin", "-e", "plugins/sqlite-budget",
                    "ruff>=0.6", "mypy>=1.11", *TEST_DEPS)
    run_pytest(session, "tests/docs")


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Every benchmark; writes bench-results/report.md and .json."""
    # granian: the server bench_gateway compares with uvicorn; mypy (mypyc) and setuptools:
    # bench_mypyc compiles a copy of the request path in a temporary folder
    install(session, *PRESENT, extra=("aiohttp>=3.10", "httpx-aiohttp>=0.1", "granian>=2.0",
                                      "msgspec>=0.18", "mypy>=1.11", "setuptools>=70"))
    session.run("python", "benchmarks/run.py", "--strict", *session.posargs)


@nox.session(python=PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """The main job: route real requests with the embedded defaults (local model, SQLite)."""
    wanted = [d for d in ("llama-local", "sqlite-budget") if d in PRESENT]
    install(session, *wanted)
    session.run("python", "demo/demo.py", *session.posargs)
