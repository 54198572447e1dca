"""The backend factory the child processes of test_processes build theirs with (imported by
spawn, so it lives in a plain module); the children are in :mod:`tests.support.budget_workers`."""

from __future__ import annotations

from typing import Any

from squirrel_models.secrets import Secret
from squirrel_models_postgres_budget import PostgresBudgetBackend, PostgresBudgetOptions


def backend(url: str, schema: str, **options: Any) -> PostgresBudgetBackend:
    return PostgresBudgetBackend(PostgresBudgetOptions(schema=schema, **options), url=Secret(url))
