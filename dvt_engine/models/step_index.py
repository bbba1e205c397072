"""Finding a step by id in a long, plan-ordered sequence without scanning it each time.

The snapshots of one run all list the same steps in the same order, but each is a new tuple, so
an index cannot hang on the tuple. Positions are remembered per shape (length, first and last
step id) and every hit is checked against the sequence itself; a miss falls back to the scan,
so the answer is always the first item with that id, as a scan gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class _HasStepId(Protocol):
    @property
    def step_id(self) -> str: ...


_T = TypeVar("_T", bound=_HasStepId)

# Short sequences are scanned: an index would not pay.
_SCAN_BELOW = 32
_MAX_SHAPES = 64
_positions: dict[tuple[int, str, str], dict[str, int]] = {}


def find_step(items: Sequence[_T], step_id: str) -> _T | None:
    """The first item whose step_id is ``step_id``, or None."""
    count = len(items)
    if count < _SCAN_BELOW:
        return next((item for item in items if item.step_id == step_id), None)
    shape = (count, items[0].step_id, items[-1].step_id)
    known = _positions.get(shape)
    if known is not None:
        index = known.get(step_id)
        if index is not None and items[index].step_id == step_id:
            return items[index]
    for item in items:
        if item.step_id == step_id:
            _remember(shape, items)
            return item
    return None


def _remember(shape: tuple[int, str, str], items: Sequence[_HasStepId]) -> None:
    if len(_positions) >= _MAX_SHAPES:
        # One call, so threads sharing the cache never see it half emptied; a cleared shape is
        # only remembered again on its next lookup.
        _positions.clear()
    positions: dict[str, int] = {}
    for index, item in enumerate(items):
        positions.setdefault(item.step_id, index)
    _positions[shape] = positions
