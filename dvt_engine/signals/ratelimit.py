"""A sliding-window limit on signals per run (contract §9: 60 signals per run per minute).

The window lives in the process that decides signals: each SignalService instance counts the
signals it admitted. Refused requests are not counted, so a client that backs off gets through
as soon as the oldest admitted signal leaves the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

WINDOW = timedelta(minutes=1)


class SlidingWindowLimiter:
    """At most ``limit`` admissions per key within any ``window``."""

    def __init__(
        self, limit: int, clock: Callable[[], datetime], window: timedelta = WINDOW
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._admitted: dict[tuple[str, str], deque[datetime]] = {}
        self._next_prune: datetime | None = None

    def try_admit(self, key: tuple[str, str]) -> bool:
        """Admit one more signal for ``key`` if the window has room; say whether it did."""
        now = self._clock()
        times = self._admitted.setdefault(key, deque())
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        self._prune(now)
        return True

    def retry_after(self, key: tuple[str, str]) -> float:
        """Seconds until ``key`` has room again (0 when it has room now)."""
        times = self._admitted.get(key)
        if not times or len(times) < self.limit:
            return 0.0
        wait = times[0] + self.window - self._clock()
        return max(0.0, wait.total_seconds())

    def _prune(self, now: datetime) -> None:
        # Once per window, forget runs with no admission inside it: memory stays bounded by the
        # runs signalled recently, at a cost of one scan per minute.
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + self.window
        horizon = now - self.window
        stale = [k for k, t in self._admitted.items() if not t or t[-1] <= horizon]
        for k in stale:
            del self._admitted[k]
