"""Value types: requests, responses, usage, prices, model cards and requirements.

All are ``attrs.frozen``: hashable, comparable, safe to share between tasks and threads.
Money is :class:`decimal.Decimal` in US dollars; token counts are ints.

They live by what they describe: :mod:`.messages` (messages, their parts, tool calls),
:mod:`.request` (:class:`AIRequest`, :class:`ResponseFormat`), :mod:`.cards` (prices, model
cards, requirements) and :mod:`.responses` (usage, chunks, responses, attempts); the checks
they share are in :mod:`.fieldchecks`. This module gathers them under one name.
"""

from __future__ import annotations

from .cards import MAX_CEILING as MAX_CEILING
from .cards import MAX_PRICE as MAX_PRICE
from .cards import MILLION as MILLION
from .cards import ModelCard, ModelRequirements, Price, PriceTier
from .messages import IMAGE_TOKENS as IMAGE_TOKENS
from .messages import ContentPart as ContentPart
from .messages import ImagePart, Message, TextPart, ToolCall, ToolCallDelta
from .messages import Role as Role
from .messages import assemble_tool_calls as assemble_tool_calls
from .request import AIRequest, ResponseFormat
from .request import ToolChoice as ToolChoice
from .responses import MAX_USAGE_TOKENS as MAX_USAGE_TOKENS
from .responses import AIResponse, AttemptRecord, Choice, ProviderResponse, StreamChunk, TokenCount, Usage
from .responses import UsageSource as UsageSource

__all__ = [
    "AIRequest",
    "AIResponse",
    "AttemptRecord",
    "Choice",
    "ImagePart",
    "Message",
    "ModelCard",
    "ModelRequirements",
    "Price",
    "PriceTier",
    "ProviderResponse",
    "ResponseFormat",
    "StreamChunk",
    "TextPart",
    "TokenCount",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]
