"""Test support shared by the test suites of several distributions.

- :mod:`.models`: paths of small real models that PyPI packages ship (SmolLM2-135M-Instruct).
- :mod:`.llama_server`: the real llama.cpp OpenAI-compatible server as a session fixture.
- :mod:`.faulty_server`: a scripted, misbehaving OpenAI-compatible server on 127.0.0.1.
- :mod:`.budget_workers`: several processes on one SQL budget: reserve/settle children and checks.
- :mod:`.budget_cli`: ``squirrel usage`` / ``squirrel budget`` over a durable budget's ledger.
- :mod:`.factories`: factories of backends and stores a test makes, closed afterwards.
- :mod:`.ports`: a free TCP port on 127.0.0.1 for the servers the tests start.

Nothing here imports a plugin: each module works with core and its test dependencies alone.
"""
