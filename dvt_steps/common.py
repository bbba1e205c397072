"""What the standard kinds share: params checks, optional imports, secrets and masking."""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

from jsonschema import Draft202012Validator

from dvt_engine.errors import StepDependencyMissing, StepParamsInvalid
from dvt_engine.ports import StepContext
from dvt_engine.secret_scan import REDACTED, secret_ref_of

#: A ``{"secretRef": "scheme:name"}`` object: the only way a plan may hand a kind a secret.
SECRET_REF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"secretRef": {"type": "string", "minLength": 1}},
    "required": ["secretRef"],
    "additionalProperties": False,
}
MAX_REPORTED_PARAM_ERRORS = 10


@functools.cache
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


def check_params(kind: str, schema: Mapping[str, Any], params: Mapping[str, Any]) -> None:
    """Raise STEP_PARAMS_INVALID (not retryable) when ``params`` break the kind's schema."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(dict(params)), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    found = [{"path": "/" + "/".join(str(p) for p in e.absolute_path),
              "message": e.message[:300]} for e in errors[:MAX_REPORTED_PARAM_ERRORS]]
    first = found[0]
    raise StepParamsInvalid(
        f"{kind} params are invalid at {first['path']}: {first['message']}",
        details={"kind": kind, "errors": found}, retryable=False)


def require(module: str, extra: str) -> ModuleType:
    """Import an optional driver, or STEP_DEPENDENCY_MISSING naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise StepDependencyMissing(
            f"{module} is not installed on this worker: pip install 'dvt[{extra}]'",
            details={"module": module, "extra": extra}, retryable=False) from exc


class Secrets:
    """Resolves secret references through the step's context and remembers every value."""

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self._values: list[str] = []

    async def value(self, item: Any) -> Any:
        """``item`` itself, or the secret it references (remembered for masking)."""
        ref = secret_ref_of(item)
        if ref is None:
            return item
        resolved = await self.ctx.secret(ref)
        self._values.append(resolved)
        return resolved

    async def deep(self, item: Any) -> Any:
        """A copy of JSON-like ``item`` with every secret reference resolved."""
        if secret_ref_of(item) is not None:
            return await self.value(item)
        if isinstance(item, Mapping):
            return {k: await self.deep(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [await self.deep(v) for v in item]
        return item

    @property
    def values(self) -> tuple[str, ...]:
        """Every secret value this step resolved, its own and the context's (a connection's)."""
        known = getattr(self.ctx, "resolved_secrets", ())
        return tuple(v for v in {*self._values, *known} if v)


def mask_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    """``data`` with every secret's UTF-8 bytes replaced by ``***`` (longest secret first)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        data = data.replace(secret.encode("utf-8"), REDACTED.encode("ascii"))
    return data


def json_size(value: Any) -> int:
    """The size in bytes of ``value`` as compact JSON (how the step runner measures output)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
               .encode("utf-8"))


def tail_text(data: bytes, limit: int) -> str:
    """The last ``limit`` bytes of ``data`` as text (invalid UTF-8 replaced)."""
    text = data[-limit:].decode("utf-8", "replace").strip()
    return ("..." + text) if len(data) > limit else text
