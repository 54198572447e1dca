"""The public API is exactly ``squirrel_models.__all__``, and importing it stays cheap."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import squirrel_models

EXPECTED = {
    "AIRequest", "AIResponse", "AllCoolingDown", "AttemptEvent", "AttemptRecord", "AuthenticationError",
    "BreakerConfig", "BudgetBackend", "BudgetBackendType", "BudgetExceeded", "BudgetLimit", "Candidate",
    "BudgetStoreError", "BudgetStoreTimeout",
    "CapabilityNotSupported", "Charge", "CircuitBreakers", "Config", "ConfigError", "ContentFiltered",
    "ContextWindowExceeded", "CostCeilingExceeded", "DeadlineExceeded", "Decision", "Estimate",
    "FallbackChain", "FallbackContext", "FallbackExhausted", "FallbackStep", "FallbackStrategy",
    "FallbackStrategyType", "InvalidRequest", "InvalidRequestError", "LedgerRow", "MalformedResponse",
    "Choice", "ImagePart", "ResponseFormat", "TextPart",
    "Message", "MidStreamError", "ModelCard", "ModelError", "ModelManager", "ModelNotFound", "ModelOverride",
    "ModelRequirements", "ModelSelector", "ModelStats", "NoModelLeft", "PluginError", "PluginManager", "Price",
    "PriceTier",
    "Provider", "SimpleProvider",
    "ProviderConnectionError", "ProviderResponse", "ProviderSpec", "ProviderTimeout", "ProviderType",
    "RateLimited", "RateLimitExceeded", "RateLimitStoreError", "RateLimitTooSmall", "RateLimit",
    "RateCharge", "RateLease",
    "RateUsage", "RateLimitStore", "RateLimitStoreType", "RequestEvent", "RequestShape", "Reservation",
    "ResourceExhausted", "ResponseStream",
    "ScopeUsage", "ScoringRule", "Secret", "ServerError", "SquirrelError", "StreamChunk", "TokenCount",
    "SyncModelManager", "SyncResponseStream",
    "TokenManager", "ToolCall", "ToolCallDelta", "UnpricedModel", "Usage", "__version__", "hookimpl",
    "load_config", "load_toml", "OpenAIChatRequest", "openai_chunk", "openai_usage_chunk",
}


def test_exported_members() -> None:
    assert set(squirrel_models.__all__) == EXPECTED
    for name in squirrel_models.__all__:
        assert getattr(squirrel_models, name) is not None, name
        obj = getattr(squirrel_models, name)
        if isinstance(obj, type) or (callable(obj) and name != "hookimpl"):
            assert obj.__module__.startswith("squirrel_models"), name


def test_all_is_a_literal_a_type_checker_reads() -> None:
    """mypy --strict takes a name imported under TYPE_CHECKING as exported only if a literal
    ``__all__`` lists it: computed from ``_EXPORTS``, every ``from squirrel_models import X``
    in a plugin was 'does not explicitly export attribute'."""
    tree = ast.parse(Path(squirrel_models.__file__).read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
    assert isinstance(node.value, ast.List | ast.Tuple), "__all__ must be a literal list"
    listed = [e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    assert len(listed) == len(node.value.elts) == len(set(listed))
    assert set(listed) == set(squirrel_models._EXPORTS) | {"__version__"}


def test_errors_have_one_root() -> None:
    for name in squirrel_models.__all__:
        obj = getattr(squirrel_models, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, squirrel_models.SquirrelError), name


def test_import_is_lazy() -> None:
    """``import squirrel_models`` loads none of the heavy dependencies."""
    code = ("import sys, squirrel_models; heavy = [m for m in ('httpx', 'opentelemetry', 'cattrs', "
            "'anyio', 'click', 'pluggy') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


#: What only some paths use: cattrs (with typing_extensions) the first configuration loaded,
#: tomllib a TOML file, importlib.metadata (with email, zipfile, csv) the loading of entry
#: points, difflib a configuration error's "did you mean".
ONLY_SOME_PATHS = ("cattrs", "tomllib", "importlib.metadata", "difflib")


def test_importing_the_api_loads_only_what_every_path_uses() -> None:
    code = ("import sys\nfrom squirrel_models import ModelManager, AIRequest, ModelRequirements\n"
            f"print([m for m in {ONLY_SOME_PATHS!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_manager_without_configuration_needs_no_converter() -> None:
    """``ModelManager()`` structures only empty options tables (the built-ins'), which need
    no cattrs; a configuration still goes through it, and its errors come at creation."""
    code = ("import sys\nfrom squirrel_models import ConfigError, ModelManager\nModelManager()\n"
            "print('cattrs' in sys.modules)\n"
            "try:\n    ModelManager({'budget': {'backend': 'memory', 'options': {'bogus': 1}}})\n"
            "except ConfigError as e:\n    print(e.field)\n")
    env = dict(os.environ, SQUIRREL_LOAD_PLUGINS="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["False", "budget.options.bogus"]
