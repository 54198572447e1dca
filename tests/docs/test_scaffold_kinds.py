"""``squirrel plugin new NAME --kind KIND``, as a plugin author runs it, for every kind: in a
fresh environment with the local core, the command writes the distribution, ``pip install -e
".[test]"`` installs it, its own tests pass (discovery through the entry point it installed,
and the core's conformance suite of its kind), ``squirrel plugins`` lists it, and it uninstalls
(the tutorial, tests/docs/test_plugin_tutorial.py, follows the provider kind further)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from squirrel_models import scaffold

from tests.docs import freshenv

#: kind -> the conformance suite its tests run.
SUITES = {"provider": "ProviderConformance", "budget": "BudgetBackendConformance",
          "scoring": "ScoringRuleConformance", "fallback": "FallbackStrategyConformance",
          "ratelimit": "RateLimitStoreConformance", "tokens": "TokenCounterConformance"}


def test_every_kind_installs_and_passes_its_own_tests(tmp_path: Path) -> None:
    assert set(SUITES) == set(scaffold.KINDS)
    env, _ = freshenv.fresh_env(tmp_path)
    for kind, suite in SUITES.items():
        name = f"my-{kind}"
        script = (f"set -e\ncd '{tmp_path}'\nsquirrel plugin new {name} --kind {kind}\ncd squirrel-models-{name}\n"
                  "pip install -q -e '.[test]'\npython -m pytest -v -p no:cacheprovider\nsquirrel plugins\n"
                  f"pip uninstall -q squirrel-models-{name}\n")
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=900)
        out = done.stdout
        assert done.returncode == 0, f"{kind}\n{out[-4000:]}\n{done.stderr[-2000:]}"
        tests = (Path(tmp_path) / f"squirrel-models-{name}" / "tests" / f"test_my_{kind}.py").read_text()
        assert f"({suite})" in tests
        assert "test_plugin_is_discovered_through_its_entry_point PASSED" in out, out[-3000:]
        assert len(re.findall(r"::TestMy\w+Conformance::\S+ PASSED", out)) >= 5, out[-3000:]
        assert re.search(rf"^{name}\s+loaded\s+squirrel-models-{name} 0\.1\.0", out, re.M), out[-2000:]
