"""Checks on what a handler returns: output is JSON of at most 32 KiB, artifacts are references
that the engine's artifact store holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.errors import (
    ArtifactNotFound,
    ArtifactStoreNotConfigured,
    StepFailed,
    StepOutputTooLarge,
)
from dvt_engine.models.snapshot import ArtifactRef

MAX_OUTPUT_BYTES = 32 * 1024


def checked_output(output: Any) -> Any:
    """The output as plain JSON, refused when it is not JSON or larger than 32 KiB."""
    try:
        encoded = json.dumps(output, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StepFailed(f"step output is not JSON: {type(exc).__name__}",
                         retryable=False) from exc
    size = len(encoded.encode("utf-8"))
    if size > MAX_OUTPUT_BYTES:
        raise StepOutputTooLarge(
            f"step output is {size} bytes, more than {MAX_OUTPUT_BYTES}; put data in artifacts",
            details={"sizeBytes": size, "limitBytes": MAX_OUTPUT_BYTES},
        )
    return json.loads(encoded)


def artifact_dicts(artifacts: Sequence[Any]) -> list[Any]:
    """Artifacts as plain data, whether given as ArtifactRef or as dicts."""
    return [a.model_dump(mode="json") if isinstance(a, ArtifactRef) else a for a in artifacts]


def checked_artifacts(artifacts: list[Any]) -> list[ArtifactRef]:
    """Artifacts validated as ArtifactRef; anything else fails the step (not retryable)."""
    checked: list[ArtifactRef] = []
    for index, item in enumerate(artifacts):
        try:
            checked.append(ArtifactRef.model_validate(item))
        except ValidationError as exc:
            raise StepFailed(
                f"artifact {index} is not an artifact reference {{uri, kind, sha256?, sizeBytes?}}",
                details={"index": index, "errors": [e["msg"] for e in exc.errors()[:5]]},
                retryable=False,
            ) from exc
    return checked


async def held_artifacts(artifacts: list[ArtifactRef], store: ArtifactStore | None) -> None:
    """Refuse any artifact ``store`` does not hold: a step records only the store's refs.

    ArtifactNotFound for a ref the store does not hold (made up, or another store's);
    ArtifactStoreNotConfigured when there are refs but no store to check them against.
    """
    if not artifacts:
        return
    if store is None:
        raise ArtifactStoreNotConfigured(
            "the step returned artifacts, but the engine has no artifact store to hold them",
            details={"uris": [a.uri for a in artifacts[:5]]})
    for index, ref in enumerate(artifacts):
        if not await store.holds(ref):
            raise ArtifactNotFound(
                f"artifact {index} ({ref.uri}) is not in the artifact store; record only refs"
                " that ctx.artifacts.put returned",
                details={"index": index, "uri": ref.uri, "sha256": ref.sha256},
                retryable=False)
