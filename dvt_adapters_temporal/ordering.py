"""Accepted signals apply in decision order inside the workflow.

Two callers' deliveries of accepted signals reach the workflow in any order. Each delivery
carries the runSeq of its decision record and of the run's previous accepted signal (the signal
service decides one signal at a time per run, so these form a chain). A signal whose
predecessor has not been applied waits for it; when that delivery was lost (its sender died
after the decision was recorded) the waiting signals go after a bounded wait, in their order.
Pure bookkeeping: the workflow owns the waiting and the patch marker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dvt_adapters_temporal.wire import SignalMessage, WorkflowInput


@dataclass
class SignalOrder:
    """Which signals wait, and the runSeq of the last signal decision applied."""

    applied_seq: int = 0
    waiting: dict[int, list[WorkflowInput]] = field(default_factory=dict)

    def must_wait(self, msg: SignalMessage) -> bool:
        """True when the signal decided before ``msg`` has not been applied yet."""
        if msg.decision_seq is None or msg.previous_seq is None:
            return False  # delivered by an engine that does not order signals
        return msg.previous_seq > self.applied_seq and msg.decision_seq > self.applied_seq

    def wait(self, item: WorkflowInput) -> None:
        """Park ``item`` until its predecessor has been applied."""
        msg = item.signal
        assert msg is not None
        assert msg.previous_seq is not None
        self.waiting.setdefault(msg.previous_seq, []).append(item)

    def applied(self, msg: SignalMessage) -> list[WorkflowInput]:
        """Record ``msg`` as applied; the signals that may go next, in decision order."""
        if msg.decision_seq is None:
            return []
        self.applied_seq = max(self.applied_seq, msg.decision_seq)
        return self._release(lambda seq: seq <= self.applied_seq)

    def give_up(self) -> list[WorkflowInput]:
        """Every waiting signal, in decision order: their predecessors' deliveries were lost."""
        if self.waiting:
            self.applied_seq = max(self.applied_seq, *self.waiting)
        return self._release(lambda _seq: True)

    def _release(self, due: Callable[[int], bool]) -> list[WorkflowInput]:
        keys = [k for k in self.waiting if due(k)]
        items = [i for k in keys for i in self.waiting.pop(k)]
        return sorted(items, key=_decision_seq)


def _decision_seq(item: WorkflowInput) -> int:
    return item.signal.decision_seq or 0 if item.signal is not None else 0
