"""dvt's state store on PostgreSQL: the append-only event log that holds the truth of every run."""

from dvt_statestore_pg.config import StoreConfig, parse_store_url
from dvt_statestore_pg.store import OutboxItem, PostgresRunStateStore, open_store

__all__ = ["OutboxItem", "PostgresRunStateStore", "StoreConfig", "open_store", "parse_store_url"]
