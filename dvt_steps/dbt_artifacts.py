"""What a dbt step keeps of dbt's own artifacts: raw, canonical, and a bounded summary.

dbt's ``manifest.json`` and ``run_results.json`` hold timestamps, an invocation id, timings and
the attempt's temporary paths, so two attempts that did exactly the same work write different
bytes, and content-addressed refs would differ. Next to the raw files a step therefore stores a
canonical form of each: those fields removed, the attempt folder replaced by ``$DVT_DBT_DIR``,
keys sorted. A retried step with the same result records the same canonical refs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ATTEMPT_DIR_TOKEN", "MAX_LISTED_NODES", "VOLATILE_KEYS", "canonical_json",
           "first_failure", "mask_bytes", "summarize"]

#: Keys whose values change from one invocation to the next, wherever they appear.
VOLATILE_KEYS = frozenset({
    "generated_at", "invocation_id", "invocation_started_at", "run_started_at", "created_at",
    "timing", "execution_time", "thread_id", "elapsed_time",
})
ATTEMPT_DIR_TOKEN = "$DVT_DBT_DIR"
#: At most this many node ids are listed in a step's output or error message.
MAX_LISTED_NODES = 50

PASSED = frozenset({"success", "pass"})
FAILED = frozenset({"fail"})
ERRORED = frozenset({"error", "runtime error"})
SKIPPED = frozenset({"skipped"})
WARNED = frozenset({"warn"})


def _stable(value: Any, attempt_dir: str) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v, attempt_dir) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_stable(v, attempt_dir) for v in value]
    if isinstance(value, str) and attempt_dir in value:
        return value.replace(attempt_dir, ATTEMPT_DIR_TOKEN)
    return value


def canonical_json(raw: bytes, attempt_dir: str) -> bytes:
    """The canonical form of one of dbt's JSON artifacts (see the module docstring)."""
    data = json.loads(raw)
    stable = _stable(data, attempt_dir)
    return json.dumps(stable, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def mask_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    """``data`` with every resolved secret value replaced by ``***``."""
    for secret in secrets:
        if not secret:
            continue
        # As written, and as it appears inside a JSON string (quotes, backslashes, \\uXXXX).
        forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
        for form in sorted(forms, key=len, reverse=True):
            data = data.replace(form.encode("utf-8"), b"***")
    return data


def summarize(run_results: Mapping[str, Any] | None) -> dict[str, Any]:
    """Counts of nodes by outcome and the ids of the failed ones (bounded)."""
    counts = {"passed": 0, "failed": 0, "errored": 0, "skipped": 0, "warned": 0, "total": 0}
    bad: list[str] = []
    for result in (run_results or {}).get("results", []):
        status = str(result.get("status", "")).lower()
        counts["total"] += 1
        for name, statuses in (("passed", PASSED), ("failed", FAILED), ("errored", ERRORED),
                               ("skipped", SKIPPED), ("warned", WARNED)):
            if status in statuses:
                counts[name] += 1
        if status in FAILED | ERRORED:
            bad.append(str(result.get("unique_id")))
    bad.sort()
    summary: dict[str, Any] = dict(counts)
    summary["failedNodes"] = bad[:MAX_LISTED_NODES]
    if len(bad) > MAX_LISTED_NODES:
        summary["failedNodesOmitted"] = len(bad) - MAX_LISTED_NODES
    return summary


def first_failure(run_results: Mapping[str, Any] | None, limit: int = 300) -> str | None:
    """``unique_id: message`` of the first failed or errored node (by id), shortened."""
    bad = sorted((str(r.get("unique_id")), str(r.get("message") or ""))
                 for r in (run_results or {}).get("results", [])
                 if str(r.get("status", "")).lower() in FAILED | ERRORED)
    if not bad:
        return None
    node, message = bad[0]
    message = " ".join(message.split())
    return f"{node}: {message[:limit]}" if message else node
