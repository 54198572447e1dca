"""squirrel-models: route each AI request to the right model, reliably and within budget.

The public API is this module's ``__all__``. Names are imported on first use, so
``import squirrel_models`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # the front door
    "ModelManager": "manager",
    "ResponseStream": "streaming",
    "SyncModelManager": "sync",
    "SyncResponseStream": "sync",
    "ModelSelector": "selection",
    "Decision": "decision",
    "Candidate": "decision",
    "FallbackChain": "fallback",
    "FallbackStep": "fallback",
    "FallbackContext": "fallback",
    "FallbackStrategy": "fallback",
    "FallbackStrategyType": "fallback",
    "CircuitBreakers": "fallback",
    "BreakerConfig": "fallback",
    "TokenManager": "tokens",
    "Estimate": "tokens",
    # values
    "AIRequest": "types",
    "AIResponse": "types",
    "AttemptRecord": "types",
    "Choice": "types",
    "ImagePart": "types",
    "Message": "types",
    "ModelCard": "types",
    "ModelRequirements": "types",
    "Price": "types",
    "PriceTier": "types",
    "ProviderResponse": "types",
    "ResponseFormat": "types",
    "StreamChunk": "types",
    "TextPart": "types",
    "TokenCount": "types",
    "ToolCall": "types",
    "ToolCallDelta": "types",
    "Usage": "types",
    "Secret": "secrets",
    # OpenAI's wire format
    "OpenAIChatRequest": "openai_format",
    "openai_chunk": "openai_format",
    "openai_usage_chunk": "openai_format",
    # configuration
    "Config": "config",
    "load_config": "config",
    "load_toml": "config",
    # plugins
    "hookimpl": "hookspecs",
    "PluginManager": "plugins",
    "Provider": "providers",
    "ProviderType": "providers",
    "ProviderSpec": "providers",
    "SimpleProvider": "simple",
    "ModelOverride": "providers",
    "ScoringRule": "scoring",
    "RequestShape": "scoring",
    "ModelStats": "stats",
    "BudgetBackend": "budget",
    "BudgetBackendType": "budget",
    "BudgetLimit": "budget",
    "Charge": "budget",
    "Reservation": "budget",
    "ScopeUsage": "budget",
    "LedgerRow": "budget",
    "RateLimit": "ratelimit",
    "RateCharge": "ratelimit",
    "RateLease": "ratelimit",
    "RateUsage": "ratelimit",
    "RateLimitStore": "ratelimit",
    "RateLimitStoreType": "ratelimit",
    "AttemptEvent": "events",
    "RequestEvent": "events",
    # errors
    "SquirrelError": "errors",
    "ConfigError": "errors",
    "PluginError": "errors",
    "InvalidRequest": "errors",
    "ModelNotFound": "errors",
    "NoModelLeft": "errors",
    "CapabilityNotSupported": "errors",
    "ResourceExhausted": "errors",
    "BudgetExceeded": "errors",
    "BudgetStoreError": "errors",
    "BudgetStoreTimeout": "errors",
    "CostCeilingExceeded": "errors",
    "UnpricedModel": "errors",
    "AllCoolingDown": "errors",
    "DeadlineExceeded": "errors",
    "FallbackExhausted": "errors",
    "ModelError": "errors",
    "RateLimited": "errors",
    "RateLimitExceeded": "errors",
    "RateLimitStoreError": "errors",
    "RateLimitTooSmall": "errors",
    "ProviderTimeout": "errors",
    "ProviderConnectionError": "errors",
    "ServerError": "errors",
    "MalformedResponse": "errors",
    "ContextWindowExceeded": "errors",
    "ContentFiltered": "errors",
    "AuthenticationError": "errors",
    "InvalidRequestError": "errors",
    "MidStreamError": "errors",
}

# Literal, not computed from _EXPORTS: type checkers read only a literal __all__, and a name
# missing from it is "not explicitly exported" under mypy --strict (the test guards the match).
__all__ = [
    "AIRequest", "AIResponse", "AllCoolingDown", "AttemptEvent", "AttemptRecord", "AuthenticationError",
    "BreakerConfig", "BudgetBackend", "BudgetBackendType", "BudgetExceeded", "BudgetLimit", "BudgetStoreError",
    "BudgetStoreTimeout", "Candidate", "CapabilityNotSupported", "Charge", "Choice", "CircuitBreakers", "Config",
    "ConfigError", "ContentFiltered", "ContextWindowExceeded", "CostCeilingExceeded", "DeadlineExceeded",
    "Decision", "Estimate", "FallbackChain", "FallbackContext", "FallbackExhausted", "FallbackStep",
    "FallbackStrategy", "FallbackStrategyType", "ImagePart", "InvalidRequest", "InvalidRequestError", "LedgerRow",
    "MalformedResponse", "Message", "MidStreamError", "ModelCard", "ModelError", "ModelManager", "ModelNotFound",
    "ModelOverride", "ModelRequirements", "ModelSelector", "ModelStats", "NoModelLeft", "OpenAIChatRequest",
    "PluginError", "PluginManager", "Price", "PriceTier", "Provider", "ProviderConnectionError", "ProviderResponse",
    "ProviderSpec",
    "ProviderTimeout", "ProviderType", "RateCharge", "RateLease", "RateLimit", "RateLimitExceeded",
    "RateLimitStore", "RateLimitStoreError", "RateLimitStoreType", "RateLimitTooSmall", "RateLimited", "RateUsage",
    "RequestEvent", "RequestShape", "Reservation", "ResourceExhausted", "ResponseFormat", "ResponseStream",
    "ScopeUsage", "ScoringRule", "Secret", "ServerError", "SimpleProvider", "SquirrelError", "StreamChunk",
    "SyncModelManager", "SyncResponseStream", "TextPart", "TokenCount", "TokenManager", "ToolCall", "ToolCallDelta",
    "UnpricedModel", "Usage", "hookimpl", "load_config", "load_toml", "openai_chunk", "openai_usage_chunk",
    "__version__",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from .budget import (
        BudgetBackend,
        BudgetBackendType,
        BudgetLimit,
        Charge,
        LedgerRow,
        Reservation,
        ScopeUsage,
    )
    from .config import Config, load_config, load_toml
    from .decision import Candidate, Decision
    from .errors import (
        AllCoolingDown,
        AuthenticationError,
        BudgetExceeded,
        BudgetStoreError,
        BudgetStoreTimeout,
        CapabilityNotSupported,
        ConfigError,
        ContentFiltered,
        ContextWindowExceeded,
        CostCeilingExceeded,
        DeadlineExceeded,
        FallbackExhausted,
        InvalidRequest,
        InvalidRequestError,
        MalformedResponse,
        MidStreamError,
        ModelError,
        ModelNotFound,
        NoModelLeft,
        PluginError,
        ProviderConnectionError,
        ProviderTimeout,
        RateLimited,
        RateLimitExceeded,
        RateLimitStoreError,
        RateLimitTooSmall,
        ResourceExhausted,
        ServerError,
        SquirrelError,
        UnpricedModel,
    )
    from .events import AttemptEvent, RequestEvent
    from .fallback import (
        BreakerConfig,
        CircuitBreakers,
        FallbackChain,
        FallbackContext,
        FallbackStep,
        FallbackStrategy,
        FallbackStrategyType,
    )
    from .hookspecs import hookimpl
    from .manager import ModelManager
    from .openai_format import OpenAIChatRequest, openai_chunk, openai_usage_chunk
    from .plugins import PluginManager
    from .providers import ModelOverride, Provider, ProviderSpec, ProviderType
    from .ratelimit import (
        RateCharge,
        RateLease,
        RateLimit,
        RateLimitStore,
        RateLimitStoreType,
        RateUsage,
    )
    from .scoring import RequestShape, ScoringRule
    from .secrets import Secret
    from .selection import ModelSelector
    from .simple import SimpleProvider
    from .stats import ModelStats
    from .streaming import ResponseStream
    from .sync import SyncModelManager, SyncResponseStream
    from .tokens import Estimate, TokenManager
    from .types import (
        AIRequest,
        AIResponse,
        AttemptRecord,
        Choice,
        ImagePart,
        Message,
        ModelCard,
        ModelRequirements,
        Price,
        PriceTier,
        ProviderResponse,
        ResponseFormat,
        StreamChunk,
        TextPart,
        TokenCount,
        ToolCall,
        ToolCallDelta,
        Usage,
    )
