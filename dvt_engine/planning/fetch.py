"""From a PlanRef to a validated plan, exactly as contract §2.1 orders it.

1. refuse a URI outside the allowlist (PLAN_URI_NOT_ALLOWED) without fetching it;
2. fetch the bytes and check their sha256 (PLAN_INTEGRITY_VALIDATION_FAILED, not retryable);
   outside the registry steps 1 and 2 share one deadline (PLAN_FETCH_FAILED, retryable);
3. refuse an unknown schemaVersion (PLAN_SCHEMA_VERSION_UNSUPPORTED);
4. validate the document (SCHEMA_VALIDATION_FAILED, IDENTIFIER_INVALID, PLAN_INVALID,
   PLAN_SECRET_LITERAL).
Capabilities and step kinds depend on the engine; engines check them with
``dvt_engine.planning.validation.build_validation_report`` after loading.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from dvt_engine.errors import (
    PlanFetchFailed,
    PlanIntegrityValidationFailed,
    PlanInvalid,
    PlanNotFound,
    PlanSchemaVersionUnsupported,
    PlanUriNotAllowed,
    SchemaValidationFailed,
    StoreUnavailable,
)
from dvt_engine.models.plan import SUPPORTED_SCHEMA_VERSIONS, ExecutionPlan, PlanRef
from dvt_engine.planning.https import (
    HttpsPlanFetcher,
    fetch_deadline,
    fetch_timeout,
    is_too_large,
    plan_too_large,
)
from dvt_engine.planning.uri_policy import REGISTRY_SCHEME, UriPolicy, registry_uri
from dvt_engine.planning.validation import MAX_PLAN_BYTES, validate_plan_document
from dvt_engine.ports import PlanFetcher, RunStateStore

__all__ = [
    "LoadedPlan",
    "PlanLoader",
    "RegistryPlanFetcher",
    "UriPolicy",
    "encode_plan",
    "store_plan",
]

# How long past the deadline a fetcher other than the https one may take before it is cut off.
FETCH_GRACE_S = 0.5


@dataclass(frozen=True)
class LoadedPlan:
    """A plan that passed contract §2.1: the model, the exact bytes, their digest and the ref."""

    plan: ExecutionPlan
    data: bytes
    sha256: str
    ref: PlanRef

    @property
    def size_bytes(self) -> int:
        """Length of the plan document in bytes."""
        return len(self.data)


class RegistryPlanFetcher(PlanFetcher):
    """Reads ``plan://sha256/<hex>`` from the state store's content-addressed registry."""

    schemes: ClassVar[tuple[str, ...]] = (REGISTRY_SCHEME,)

    def __init__(self, store: RunStateStore) -> None:
        self.store = store

    async def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        """The stored bytes (PLAN_NOT_FOUND when absent; too large past ``max_bytes``)."""
        digest = uri.rsplit("/", 1)[-1]
        data = await self.store.get_plan(digest)
        if data is None:
            raise PlanNotFound(f"no plan stored under {uri}", details={"uri": uri})
        if len(data) > max_bytes:
            raise plan_too_large(uri, max_bytes)
        return data


def _integrity_error(
    ref: PlanRef, actual: str | None, **extra: Any
) -> PlanIntegrityValidationFailed:
    details: dict[str, Any] = {"expected": ref.sha256, "actual": actual, "uri": ref.uri, **extra}
    why = f"digest {actual}" if actual else "a different size"
    return PlanIntegrityValidationFailed(
        f"plan at {ref.uri} has {why}, expected sha256 {ref.sha256}",
        details=details,
        retryable=False,
    )


class PlanLoader:
    """Loads plans by reference: allowlist, fetch, integrity, version, validation."""

    def __init__(
        self,
        store: RunStateStore | None,
        *,
        allowed_hosts: Iterable[str] = (),
        policy: UriPolicy | None = None,
        fetchers: Mapping[str, PlanFetcher] | Iterable[PlanFetcher] | None = None,
        max_plan_bytes: int = MAX_PLAN_BYTES,
        timeout_s: float = 10.0,
    ) -> None:
        if policy is not None and tuple(allowed_hosts):
            raise ValueError("pass either allowed_hosts or policy, not both")
        self.policy = policy or UriPolicy(allowed_hosts, allow_registry=store is not None)
        self.max_plan_bytes = max_plan_bytes
        self.timeout_s = timeout_s
        self._fetchers: dict[str, PlanFetcher] = {}
        https = HttpsPlanFetcher(self.policy, timeout_s=timeout_s)
        for scheme in https.schemes:
            self._fetchers[scheme] = https
        if store is not None:
            self._fetchers[REGISTRY_SCHEME] = RegistryPlanFetcher(store)
        if isinstance(fetchers, Mapping):
            self._fetchers.update(fetchers)
        else:
            for fetcher in fetchers or ():
                for scheme in fetcher.schemes:
                    self._fetchers[scheme] = fetcher

    async def load(self, plan_ref: PlanRef) -> LoadedPlan:
        """Return the validated plan behind ``plan_ref`` or raise the first coded error."""
        data, limit = await self._fetch(plan_ref)
        if len(data) > limit:
            raise plan_too_large(plan_ref.uri, limit)
        actual = hashlib.sha256(data).hexdigest()
        if actual != plan_ref.sha256:
            raise _integrity_error(plan_ref, actual)
        if plan_ref.size_bytes is not None and plan_ref.size_bytes != len(data):
            raise _integrity_error(
                plan_ref,
                actual,
                expectedSizeBytes=plan_ref.size_bytes,
                actualSizeBytes=len(data),
                reason="size",
            )
        if plan_ref.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            raise PlanSchemaVersionUnsupported(
                f"schemaVersion {plan_ref.schema_version!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_SCHEMA_VERSIONS)})",
                details={
                    "schemaVersion": plan_ref.schema_version,
                    "supported": list(SUPPORTED_SCHEMA_VERSIONS),
                    "path": "planRef.schemaVersion",
                },
            )
        plan = validate_plan_document(data)
        _check_ref_matches(plan_ref, plan)
        return LoadedPlan(plan=plan, data=data, sha256=actual, ref=plan_ref)

    async def _fetch(self, plan_ref: PlanRef) -> tuple[bytes, int]:
        """The bytes behind the ref and the size limit they were read under.

        Outside the registry, one deadline covers the allowlist check (name resolution) and
        the fetch; the https fetcher meets it itself, other fetchers are cut off shortly after.
        """
        with fetch_deadline(self.timeout_s) as deadline:
            try:
                checked = await asyncio.wait_for(
                    self.policy.check(plan_ref.uri), max(deadline - time.monotonic(), 0.0)
                )
            except TimeoutError:
                raise fetch_timeout(plan_ref.uri, self.timeout_s) from None
            if checked.digest is not None and checked.digest != plan_ref.sha256:
                raise _integrity_error(plan_ref, checked.digest, reason="registry URI digest")
            fetcher = self._fetchers.get(checked.scheme)
            if fetcher is None:
                raise PlanUriNotAllowed(
                    f"no plan fetcher for scheme {checked.scheme!r}",
                    details={"uri": plan_ref.uri, "reason": "no fetcher"},
                )
            limit = self.max_plan_bytes
            if plan_ref.size_bytes is not None:
                if plan_ref.size_bytes > self.max_plan_bytes:
                    raise PlanFetchFailed(
                        f"plan declares {plan_ref.size_bytes} bytes, over {self.max_plan_bytes}",
                        details={"uri": plan_ref.uri, "sizeBytes": plan_ref.size_bytes},
                        retryable=False,
                    )
                limit = plan_ref.size_bytes
            fetch = fetcher.fetch(plan_ref.uri, max_bytes=limit)
            try:
                if checked.scheme == REGISTRY_SCHEME:
                    return await fetch, limit  # the store bounds its own reads
                left = max(deadline - time.monotonic(), 0.0) + FETCH_GRACE_S
                return await asyncio.wait_for(fetch, left), limit
            except TimeoutError:
                raise fetch_timeout(plan_ref.uri, self.timeout_s) from None
            except PlanFetchFailed as exc:
                if plan_ref.size_bytes is None or not is_too_large(exc):
                    raise
                raise _integrity_error(
                    plan_ref, None, expectedSizeBytes=plan_ref.size_bytes, reason="size"
                ) from None


def _check_ref_matches(ref: PlanRef, plan: ExecutionPlan) -> None:
    meta = plan.metadata
    for name, in_ref, in_plan in (
        ("planId", ref.plan_id, meta.plan_id),
        ("planVersion", ref.plan_version, meta.plan_version),
        ("schemaVersion", ref.schema_version, meta.schema_version),
    ):
        if in_ref != in_plan:
            raise PlanInvalid(
                f"the PlanRef says {name} {in_ref!r} but the plan says {in_plan!r}",
                details={"rule": "ref_mismatch", "field": name, "planRef": in_ref, "plan": in_plan},
            )


def encode_plan(data: bytes | str | Mapping[str, Any] | ExecutionPlan) -> bytes:
    """The bytes stored for a plan: bytes and text as given, objects as compact sorted JSON."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if isinstance(data, ExecutionPlan):
        data = data.model_dump(mode="json", by_alias=True, exclude_unset=True)
    try:
        text = json.dumps(
            data, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
        )
        return text.encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError) as exc:
        # Not JSON-encodable: validation names the offending path when it can.
        validate_plan_document(data)
        raise SchemaValidationFailed(
            f"plan is not JSON-encodable: {exc}",
            details={"errors": [{"path": "", "message": str(exc)}]},
        ) from exc


async def store_plan(
    store: RunStateStore, data: bytes | str | Mapping[str, Any] | ExecutionPlan
) -> PlanRef:
    """Validate a plan document, store it in the registry once, and return its PlanRef."""
    raw = encode_plan(data)
    plan = validate_plan_document(raw)
    digest = hashlib.sha256(raw).hexdigest()
    uri = await store.put_plan(raw)
    if uri != registry_uri(digest):
        raise StoreUnavailable(
            f"the store answered {uri!r} for a plan with sha256 {digest}",
            details={"expected": registry_uri(digest), "actual": uri},
            retryable=False,
        )
    return PlanRef(
        uri=uri,
        sha256=digest,
        schema_version=plan.metadata.schema_version,
        plan_id=plan.metadata.plan_id,
        plan_version=plan.metadata.plan_version,
        size_bytes=len(raw),
    )
