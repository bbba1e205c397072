"""dvt's search attributes on Temporal: the names the engine sets and the dev server registers."""

from __future__ import annotations

from collections.abc import Collection

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

# Registered as Keyword search attributes on servers that allow custom attributes.
SEARCH_ATTRIBUTE_NAMES: tuple[str, ...] = ("tenantId", "projectId", "environmentId")


def search_attribute_keys() -> list[SearchAttributeKey[str]]:
    """The dvt ownership search attributes as typed keys."""
    return [SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTE_NAMES]


def ownership_attributes(tenant_id: str, project_id: str, environment_id: str, *,
                         registered: Collection[str] = SEARCH_ATTRIBUTE_NAMES
                         ) -> TypedSearchAttributes:
    """A run's ownership search attributes, those of them the server has registered."""
    values = {"tenantId": tenant_id, "projectId": project_id, "environmentId": environment_id}
    return TypedSearchAttributes([SearchAttributePair(k, values[k.name])
                                  for k in search_attribute_keys() if k.name in registered])
