"""demo/demo.py, the README's first command (``./nox -s demo``), run whole on the real local
model: the amounts it prints agree with each other, to the last digit. It showed "$5.00 of
$5.00 left" after a paid answer (the budget rounded to cents) and a worst case of $0.000402
next to the error's $0.0004025, and "SQLite at ..." with no SQLite backend installed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

DEMO = Path(__file__).parents[2] / "demo" / "demo.py"
COST = re.compile(r"^\s+cost\s+\$(?P<cost>[\d.]+)\s", re.MULTILINE)
LEFT = re.compile(r"^\s+budget\s+\$(?P<left>[\d.]+) of \$(?P<limit>[\d.]+) left today \(global\)$",
                  re.MULTILINE)


def test_the_demo_runs_and_its_amounts_agree(tmp_path: Path) -> None:
    env = dict(os.environ, SQUIRREL_DATA_DIR=str(tmp_path), NO_COLOR="1")
    done = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, env=env,
                          timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in out + done.stderr and "done in" in out
    # the budget backend it names is the one it runs
    durable = importlib.util.find_spec("squirrel_models_sqlite_budget") is not None
    backend = "SQLite at " if durable else "memory (install squirrel-models-sqlite-budget"
    assert re.search(rf"^\s+budget\s+{re.escape(backend)}", out, re.MULTILINE), out

    # each answer's budget line: the limit less every cost shown so far
    spent = Decimal(0)
    answers = list(re.finditer(r"^\s+cost\s.*\n^\s+budget\s.*$", out, re.MULTILINE))
    assert len(answers) == 4, out
    for m in answers:
        spent += Decimal(COST.search(m.group(0))["cost"])  # type: ignore[index]
        left = LEFT.search(m.group(0))
        assert left is not None, m.group(0)
        assert Decimal(left["left"]) == Decimal(left["limit"]) - spent, m.group(0)

    # the ledger's total is what the answers cost, and the last budget line agrees
    total = Decimal(re.search(r"total \$([\d.]+)", out)[1])  # type: ignore[index]
    assert total == spent
    last = list(LEFT.finditer(out))[-1]
    assert Decimal(last["left"]) == Decimal(last["limit"]) - total

    # the worst case shown is the one the refusal names
    shown = re.search(r"worst case .* = \$([\d.]+), ceiling", out)
    refused = re.search(r"CostCeilingExceeded: worst case \$([\d.]+) on", out)
    assert shown is not None and refused is not None, out
    assert Decimal(shown[1]) == Decimal(refused[1])
