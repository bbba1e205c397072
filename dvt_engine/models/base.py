"""Shared model configuration: Python attributes in snake_case, JSON in camelCase."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

# Mirrors dvt_engine.identifiers: 1-200 chars, no '|' and no C0/C1 control characters.
IDENTIFIER_PATTERN = r"^[^|\x00-\x1f\x7f-\x9f]+$"

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=IDENTIFIER_PATTERN)
]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class DvtModel(BaseModel):
    """Immutable model that reads and writes camelCase JSON; unknown fields are ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra="ignore",
    )


class StrictModel(DvtModel):
    """Like DvtModel, but refuses unknown fields: for input written by people (plans, signals)."""

    model_config = ConfigDict(extra="forbid")
