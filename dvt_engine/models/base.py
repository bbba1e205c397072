"""Shared model configuration: Python attributes in snake_case, JSON in camelCase."""

from __future__ import annotations

from typing import Annotated, Any, Self

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

    @classmethod
    def from_trusted(cls, fields: dict[str, Any]) -> Self:
        """A model of values this program validated before (e.g. a row its store wrote), unchecked.

        ``fields`` holds every field by its Python name, each already of its declared type
        (enums as members, times as datetimes); the result equals the validated model and
        serialises to the same bytes. Nothing read from outside may come through here.
        """
        model = cls.__new__(cls)
        # What model_construct does for a complete set of fields, without its per-field loop
        # (which costs more than validating these small models).
        object.__setattr__(model, "__dict__", fields)
        object.__setattr__(model, "__pydantic_fields_set__", set(fields))
        object.__setattr__(model, "__pydantic_extra__", None)
        object.__setattr__(model, "__pydantic_private__", None)
        return model


class StrictModel(DvtModel):
    """Like DvtModel, but refuses unknown fields: for input written by people (plans, signals)."""

    model_config = ConfigDict(extra="forbid")
