"""dvt's search attributes on Temporal: the names the engine sets and the dev server registers."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

# Registered as Keyword search attributes on servers that allow custom attributes.
SEARCH_ATTRIBUTE_NAMES: tuple[str, ...] = ("tenantId", "projectId", "environmentId")


def search_attribute_keys() -> list[SearchAttributeKey[str]]:
    """The dvt ownership search attributes as typed keys."""
    return [SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTE_NAMES]
