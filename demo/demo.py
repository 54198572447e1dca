"""squirrel-models in one minute: real routing on this machine, no API key, no server.

Uses the embedded default configuration (the local SmolLM2 model through llama-local, a
durable SQLite budget of $5 a day) and adds two providers to show the rest of the job:

- ``rented``: the same model file, priced like a rented GPU box, so a per-request cost
  ceiling has something to refuse;
- ``workstation``: a local model that is preferred (tag ``gpu``) but whose file disappears
  after start-up, a real failure of lazy loading, so the request falls back to ``local``.

    ./nox -s demo            # or: python demo/demo.py   (SQUIRREL_DATA_DIR keeps the ledger)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from squirrel_models.defaults import default_config
from squirrel_models.errors import SquirrelError
from squirrel_models.manager import ModelManager
from squirrel_models.plugins import PluginManager
from squirrel_models.types import AIRequest, AIResponse, ModelRequirements

COLOR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
PROMPTS = ("What is the capital of France?", "Give me one tip for saving money.", "Name three colours.")


def paint(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if COLOR else text


def bold(t: str) -> str:
    return paint(t, "1")


def dim(t: str) -> str:
    return paint(t, "2")


def green(t: str) -> str:
    return paint(t, "32")


def red(t: str) -> str:
    return paint(t, "31")


def heading(title: str) -> None:
    print()
    print(bold(title))
    print(dim("─" * len(title)))


def row(label: str, value: str) -> None:
    print(f"  {dim(f'{label:<10}')} {value}")


def usd(amount: Decimal | None) -> str:
    # every digit: a sum rounded for show ($0.000402 for $0.0004025, $5.00 left after a
    # charge) would contradict the errors and the ledger printed next to it
    return "unknown" if amount is None else f"${amount.normalize():f}"


def one_line(text: str, width: int = 88) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


async def budget_left(mm: ModelManager, model_id: str) -> str:
    (u, *_) = await mm.tokens.check_budget(mm.models[model_id])
    return f"{usd(u.remaining)} of {usd(u.limit)} left today ({u.scope})"


async def show_answer(mm: ModelManager, prompt: str, resp: AIResponse, seconds: float) -> None:
    u = resp.usage
    print(f"  {bold('>')} {prompt}")
    print(f"    {green(one_line(resp.text) or '(empty answer)')}")
    row("model", resp.model)
    chosen = resp.decision.chosen
    if chosen is not None and chosen.card.id != resp.model:
        row("why", f"first choice {chosen.card.id} failed; this was next in the ranking")
    else:
        row("why", resp.decision.reason())
    row("tokens", f"{u.input_tokens} in + {u.output_tokens} out ({u.source}: the model's own tokenizer)"
        if u.source == "counted" else f"{u.input_tokens} in + {u.output_tokens} out ({u.source})")
    row("cost", f"{usd(resp.cost)}   {dim(f'{seconds:.2f} s')}")
    row("budget", await budget_left(mm, resp.model))


def build_config(pm: PluginManager, vanishing: Path) -> dict[str, Any]:
    cfg = default_config(pm)
    local = cfg["providers"][0]  # {"name": "local", "type": "llama-local", "options": {}}
    from squirrel_models_llama_local import default_model_path

    model_file = str(default_model_path())
    name = Path(model_file).stem
    cfg["providers"] += [
        {"name": "rented", "type": "llama-local", "options": {"models": [model_file]},
         "models": [{"name": name, "price": {"input": "0.50", "output": "1.50"}}]},
        {"name": "workstation", "type": "llama-local", "options": {"models": [str(vanishing)]},
         "models": [{"name": vanishing.stem, "tags": ["gpu", "local"]}]},
    ]
    cfg["fallback"] = {"max_attempts": 3}
    return {**cfg, "providers": [local, *cfg["providers"][1:]]}


async def main() -> None:
    t_start = time.perf_counter()
    data = os.environ.get("SQUIRREL_DATA_DIR")
    tmp = None
    if not data:
        tmp = tempfile.mkdtemp(prefix="squirrel-demo-")
        os.environ["SQUIRREL_DATA_DIR"] = data = tmp
    from squirrel_models_llama_local import default_model_path

    print(bold("squirrel-models demo") + dim("  ·  route requests to the right model, reliably, within budget"))
    print(dim("  fetching the local model if needed (98 MB, once) ..."), end="\r")
    source = default_model_path()
    vanishing = Path(data) / "workstation-model.gguf"
    try:
        os.link(source, vanishing)  # no copy when on the same file system
    except OSError:
        shutil.copyfile(source, vanishing)

    pm = PluginManager()
    async with ModelManager(build_config(pm, vanishing), plugins=pm) as mm:
        heading("Models (cards read from the GGUF files; no hand-typed tables)")
        for card in mm.models.values():
            meta = card.metadata
            price = "free" if card.price is not None and card.price.per_1k_max == 0 else (
                f"${card.price.input}/${card.price.output} per 1M" if card.price else "unknown")
            print(f"  {card.id:<46} {meta.get('architecture', '?')} {meta.get('parameter_count', 0) / 1e6:.0f}M "
                  f"{meta.get('quantization', '?'):<5} ctx {card.context_window:<5} {price}")
        row("budget", f"SQLite at {Path(data) / 'budget.sqlite3'}" if mm.config.budget.backend == "sqlite"
            else f"{mm.config.budget.backend} (install squirrel-models-sqlite-budget for a durable one)")

        heading("1. Three prompts, routed with the embedded defaults")
        for prompt in PROMPTS:
            t0 = time.perf_counter()
            resp = await mm.complete(AIRequest.from_prompt(prompt, max_tokens=48, temperature=0.2),
                                     ModelRequirements(exclude_providers={"workstation"}))
            await show_answer(mm, prompt, resp, time.perf_counter() - t0)
            print()
        print(dim("  The full ranking for the last one:"))
        for line in resp.decision.explain().splitlines():
            print("   " + dim(line))

        heading("2. A provider that fails, and the fallback")
        os.unlink(vanishing)  # the preferred model's file goes away after start-up
        prompt = "Say hello to the squirrels."
        t0 = time.perf_counter()
        resp = await mm.complete(AIRequest.from_prompt(prompt, max_tokens=24),
                                 ModelRequirements(prefer_tags={"gpu"}))
        for a in resp.attempts:
            mark = green("ok    ") if a.outcome == "ok" else red(f"{a.outcome:<6}")
            detail = f"{type(a.error).__name__}: {one_line(str(a.error), 70)}" if a.error else "answered"
            print(f"  attempt {a.number}  {mark} {a.model_id:<48} {dim(detail)}")
        await show_answer(mm, prompt, resp, time.perf_counter() - t0)

        heading("3. Refused before any call by the request's cost ceiling")
        rented = next(c for c in mm.models.values() if c.provider == "rented")
        req = AIRequest.from_prompt("Write a long essay about budgets.", max_tokens=256)
        ceiling = Decimal("0.0001")
        est = mm.tokens.estimate(req, rented)
        row("model", f"{rented.id} at ${rented.price.input}/${rented.price.output} per 1M tokens"
            if rented.price else rented.id)
        row("worst case", f"{est.prompt.tokens} prompt tokens (exact) + {est.max_output} output = "
                          f"{usd(est.worst_case_cost)}, ceiling {usd(ceiling)}")
        try:
            await mm.complete(req, ModelRequirements(models={rented.id}, max_request_cost=ceiling))
            print(red("  unexpectedly answered"))
        except SquirrelError as exc:
            row("refused", red(f"{type(exc).__name__}: {one_line(str(exc), 140)}"))
        row("calls", "none made: nothing reserved, nothing spent")

        rows = await mm.budget_backend.rows()  # type: ignore[attr-defined]
        heading("Ledger")
        total = sum((r.cost or Decimal(0)) for r in rows)
        row("attempts", f"{len(rows)} recorded ({sum(r.outcome == 'ok' for r in rows)} ok), "
                        f"{sum(r.input_tokens + r.output_tokens for r in rows)} tokens, total {usd(total)}")
        row("budget", await budget_left(mm, resp.model))
    print()
    print(dim(f"done in {time.perf_counter() - t_start:.1f} s"))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    anyio.run(main)
