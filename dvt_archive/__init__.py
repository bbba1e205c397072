"""The cold archive of finished runs: Parquet files on a directory or S3 (``dvt archive``).

``archive_runs`` moves old events out of the PostgreSQL store's hot log, ``ParquetColdReader``
reads them back for the store (the ``dvt.cold_stores`` port of ``dvt_engine.archive``),
``rebuild_from_cold`` recomputes snapshots over both tiers and ``export_events`` writes a
tenant's events of a period, hot and cold, with a manifest (``export_lines`` streams it).
``apply_retention`` (dvt_archive.retention) applies each tenant's retention terms and
``purge_tenant`` (dvt_archive.purge) removes a tenant everywhere under a signed tombstone.
"""
