"""The cost of the one redaction point, :func:`squirrel_models.secrets.redact`, on the texts it
sees: an error message, a log line with a URL and usage fields, a 4 KB JSON error body, a
64 KB and a 1 MB text without secrets, and the worst texts for its expressions.

``python benchmarks/bench_redact.py [--quick]``: prints, for each text, the median time of
``redact`` and its ratio to ``str.lower`` of the same text, measured in the same run (the
machine is shared and noisy: read the ratios). Run it under two trees (``PYTHONPATH=OTHER/
core/src``) to compare them.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

from squirrel_models.secrets import redact

USAGE = json.dumps({"usage": {"prompt_tokens": 1200, "completion_tokens": 85, "total_tokens": 1285,
                              "prompt_tokens_details": {"cached_tokens": 0}}})
TEXTS = {
    "error message": "ServerError: HTTP 503 from 127.0.0.1:8080 (model 'gpt-4o-mini', provider 'oa'): "
                     "upstream overloaded, retry after 2 s",
    "log line": "POST http://127.0.0.1:8080/v1/chat/completions 200 OK max_tokens=256 tokens used: 1285 "
                + USAGE,
    "json error body 4 KB": json.dumps({"error": {"message": "The model is overloaded. " * 150,
                                                  "type": "server_error", "param": None}}),
    "text 64 KB": ("The quick brown fox jumps over the lazy dog; the token budget is fine. " * 900)[:65536],
    "text 1 MB": ("Words and numbers 12345, a password prompt, a token count: " * 20000)[:2**20],
    "many URLs 64 KB": ("see http://host.example:8080/v1/models?x=1 and redis://cache:6379/0 " * 1000)[:65536],
    "scheme run 400 KB": "a://" * 100_000,
}


def median_s(fn: object, text: str, n: int) -> float:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(text)  # type: ignore[operator]
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main(quick: bool = False) -> dict[str, Any]:
    """Each text's median ``redact`` time beside ``str.lower`` of the same text (the figures
    ``run.py`` reports; printed as they come)."""
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'text':24} {'redact':>12} {'str.lower':>12} {'ratio':>8}")
    table = []
    for name, text in TEXTS.items():
        n = max(3, min(2000, 2_000_000 // max(len(text), 1))) // (4 if quick else 1) or 3
        r = median_s(redact, text, n)
        base = median_s(str.lower, text, n)
        print(f"{name:24} {r * 1e6:10.1f}us {base * 1e6:10.1f}us {r / base:8.1f}")
        table.append({"text": name, "chars": len(text), "redact_us": round(r * 1e6, 1),
                      "str_lower_us": round(base * 1e6, 1), "ratio": round(r / base, 1)})
    return {"title": "Redaction: the one redaction point on the texts it sees", "table": table,
            "targets": [],
            "notes": ["median of n calls per text; the baseline is str.lower of the same text in "
                      "the same run (read the ratios: the machine is shared and noisy)."]}


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
