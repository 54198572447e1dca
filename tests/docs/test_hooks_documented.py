"""docs/hooks.md has a section per hookspec whose signature is the real one (datasette's
``test_docs.py`` habit): a hook added, renamed or changed without its docs fails here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from squirrel_models import hookspecs

HOOKS_MD = Path(__file__).parents[2] / "docs" / "hooks.md"
SECTION = re.compile(r"^## `(\w+)`\s*$", re.MULTILINE)
FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def sections() -> dict[str, str]:
    text = HOOKS_MD.read_text(encoding="utf-8")
    marks = list(SECTION.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    out: dict[str, str] = {}
    for m, end in zip(marks, ends, strict=True):
        body = text[m.end():end]
        # A section ends at the next level-2 heading of any kind.
        nxt = re.search(r"^## ", body, re.MULTILINE)
        out[m.group(1)] = body[:nxt.start()] if nxt else body
    return out


def normalize(signature: str) -> str:
    """Signature text without whitespace, string-annotation quotes or a trailing colon."""
    return re.sub(r"\s+", "", signature).replace("'", "").replace('"', "").rstrip(":")


def documented_signature(body: str) -> str:
    block = FENCE.search(body)
    assert block is not None, "the section has no ```python block with the signature"
    lines = block.group(1).strip().splitlines()
    assert lines[0].startswith("def "), "the first code block must start with the signature"
    return " ".join(lines)


@pytest.mark.parametrize("name", hookspecs.spec_names())
def test_every_hookspec_has_a_section_with_its_exact_signature(name: str) -> None:
    docs = sections()
    assert name in docs, f"docs/hooks.md has no section '## `{name}`'"
    real = f"def {name}{inspect.signature(getattr(hookspecs, name))}"
    assert normalize(documented_signature(docs[name])) == normalize(real)


@pytest.mark.parametrize("name", hookspecs.spec_names())
def test_firstresult_is_documented_exactly_where_it_applies(name: str) -> None:
    opts = getattr(getattr(hookspecs, name), hookspecs.PROJECT + "_spec")
    assert ("firstresult" in sections()[name]) == bool(opts["firstresult"])


def test_no_section_for_a_hook_that_does_not_exist() -> None:
    stale = set(sections()) - set(hookspecs.spec_names())
    assert not stale, f"docs/hooks.md documents hooks that are gone: {sorted(stale)}"


def test_spec_names_finds_every_spec() -> None:
    # spec_names() is what the tests above trust: cross-check it against pluggy's own view.
    import pluggy

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    assert sorted(hookspecs.spec_names()) == sorted(
        n for n in dir(pm.hook) if not n.startswith("_"))


@pytest.mark.anyio
async def test_the_fallback_strategy_example_works(squirrel_plugins, squirrel_manager) -> None:
    """The register_fallback_strategies section's example, as written: a ServerError that says
    when to come back is retried on the same model after that wait."""
    import types

    from squirrel_models import AIRequest, ServerError
    from squirrel_models.testing import Fail, Reply

    (code,) = [c for c in FENCE.findall(sections()["register_fallback_strategies"]) if "class Patience" in c]
    plugin = types.ModuleType("patience_example")
    exec(compile(code, "hooks.md", "exec"), plugin.__dict__)
    squirrel_plugins.register(plugin, "patience-example")
    free = {"input": 0, "output": 0}
    config = {"providers": [{"name": "p", "type": "scripted", "options": {"models": ["a", "b"]},
                             "models": [{"name": "a", "price": free, "quality": 0.9},
                                        {"name": "b", "price": free, "quality": 0.1}]}],
              "fallback": {"strategies": ["patience", "next_candidate"], "max_attempts": 3,
                           "options": {"patience": {"max_wait": 1}}}}
    overloaded = ServerError("HTTP 529 (overloaded_error): Overloaded", status_code=529)
    overloaded.retry_after = 0.05
    async with squirrel_manager(config, plugins=squirrel_plugins) as manager:
        manager.providers["p"].script("a", Fail(overloaded), Reply("from a"))
        response = await manager.complete(AIRequest.from_prompt("hi"))
    assert [a.model_id for a in response.attempts] == ["p/a", "p/a"]
    assert response.text == "from a"


@pytest.mark.parametrize("name", hookspecs.spec_names())
def test_each_example_registers_as_a_plugin(name: str) -> None:
    """Every example of a section that marks a hookimpl is valid Python whose hookimpls the
    plugin manager accepts (names and arguments as the specs have them)."""
    import types

    from squirrel_models import PluginManager

    examples = [c for c in FENCE.findall(sections()[name]) if "@hookimpl" in c]
    for i, code in enumerate(examples):
        plugin = types.ModuleType(f"hooks_md_{name}_{i}")
        exec(compile(code, "hooks.md", "exec"), plugin.__dict__)
        pm = PluginManager(strict=True, load_entry_points=False)
        pm.register(plugin, plugin.__name__)
        assert name in {i.name: i for i in pm.plugins()}[plugin.__name__].hooks


def test_every_field_of_a_registration_type_is_documented() -> None:
    """The registration hooks' sections name every field of the type they return: hooks.md
    left out FallbackStrategyType.options_type (a strategy's options checked like a
    provider's) and ScoringRule.card_key."""
    import attrs
    from squirrel_models import BudgetBackendType, FallbackStrategyType, ProviderType, ScoringRule
    from squirrel_models.ratelimit import RateLimitStoreType
    from squirrel_models.sharedbreakers import BreakerStoreType

    docs = sections()
    for hook, kind in [("register_providers", ProviderType), ("register_scoring_rules", ScoringRule),
                       ("register_fallback_strategies", FallbackStrategyType),
                       ("register_budget_backends", BudgetBackendType),
                       ("register_ratelimit_stores", RateLimitStoreType),
                       ("register_breaker_stores", BreakerStoreType)]:
        missing = [f.name for f in attrs.fields(kind) if not re.search(rf"\b{f.name}\b", docs[hook])]
        assert not missing, f"{hook}: {kind.__name__} fields not in docs/hooks.md: {missing}"
