"""The state store contract (section 5), as one abstract test class every store subclasses.

A store's test module subclasses ``StoreContractSuite`` and provides two fixtures:

- ``store``: an open store on fresh or shared data (tests use unique run and tenant ids);
- ``store_factory``: an async callable opening another store over the same data, to play a
  second writer process (a store that lives in one process may return the same instance).

The tests live in one module per concern (runs and reads, the log, following); the
concurrency suite (``store_concurrency``) is a separate class with its own hooks.
"""

from __future__ import annotations

from contract_tests.store_follow_suite import FollowContract
from contract_tests.store_helpers import (
    WAIT_S,
    Collector,
    StoreFactory,
    TenantCollector,
    fresh_copy,
    happy_path,
    make_header,
    new_id,
)
from contract_tests.store_log_suite import LogContract
from contract_tests.store_runs_suite import RunsContract

__all__ = [
    "WAIT_S",
    "Collector",
    "StoreContractSuite",
    "StoreFactory",
    "TenantCollector",
    "fresh_copy",
    "happy_path",
    "make_header",
    "new_id",
]


class StoreContractSuite(RunsContract, LogContract, FollowContract):
    """Contract §5 for any RunStateStore. Not collected itself: subclass it."""
