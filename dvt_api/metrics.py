"""Prometheus metrics of the service (names in docs/api.md), in a registry per app.

Labels are bounded: route templates (never raw paths), methods, status codes, engine names,
step kinds (capped, see ``BoundedLabel``); never a run id or key. A tenant id appears in one
series only, ``dvt_limit_rejections_total``, because the contract names it there, and it is
capped the same way.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Label values an open-ended label (step kind, tenant, engine) takes before new ones are
#: reported as ``other``: a registry of 10 000 kinds or a flood of tenants cannot grow the
#: exposition without bound.
MAX_KINDS = 100
MAX_TENANTS = 100
MAX_ENGINES = 20
OTHER = "other"
#: What a limit rejection refused (the limits of docs/api.md; the kinds are fixed, so bounded).
LIMIT_KINDS = ("active_runs", "run_starts", "signals", "plan_steps", "plan_bytes",
               "queue_full", "budget")
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STEP_SECONDS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
_APPEND_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LAG_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class BoundedLabel:
    """Admits the first ``limit`` distinct values of a label; later ones become ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        """``value`` while there is room for it (or it was admitted before), else ``other``."""
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        return OTHER


class ApiMetrics:
    """The service's instruments, registered in their own CollectorRegistry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.kind_label = BoundedLabel(MAX_KINDS)
        self.tenant_label = BoundedLabel(MAX_TENANTS)
        self.engine_label = BoundedLabel(MAX_ENGINES)
        self.http_requests = Counter(
            "dvt_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=r)
        self.http_duration = Histogram(
            "dvt_http_request_duration_seconds", "Time to answer an HTTP request (headers).",
            ["method", "route"], registry=r, buckets=_SECONDS)
        self.runs_started = Counter(
            "dvt_runs_started", "RunStarted events committed to the store, by engine (each "
            "counted by the one service process that takes it from the outbox).", ["engine"],
            registry=r)
        self.runs_finished = Counter(
            "dvt_runs_finished", "Runs that reached a terminal status, by status and engine.",
            ["status", "engine"], registry=r)
        self.runs_active = Gauge(
            "dvt_runs_active", "Runs of the store not yet in a terminal status, by engine "
            "(read from the store at scrape time; the same in every process).", ["engine"],
            registry=r)
        self.step_duration = Histogram(
            "dvt_step_duration_seconds", "From StepStarted to StepCompleted or StepFailed "
            "(the events' occurredAt, else emittedAt), by step kind and outcome.",
            ["kind", "outcome"], registry=r, buckets=_STEP_SECONDS)
        self.store_append = Histogram(
            "dvt_store_append_duration_seconds", "Appends this process made through its "
            "store, by operation and outcome.", ["op", "outcome"], registry=r,
            buckets=_APPEND_SECONDS)
        self.projection_lag = Histogram(
            "dvt_projection_lag_seconds", "From an event's commit in the store until this "
            "process's reader takes it (outbox: metrics, run logs, webhooks; tenant_stream: "
            "SSE clients).", ["reader"], registry=r, buckets=_LAG_SECONDS)
        self.snapshot_lag = Gauge(
            "dvt_snapshot_lag_events", "Most events any active run's stored snapshot is behind "
            "its log (readers apply them on read; read at scrape time).", registry=r)
        self.outbox_depth = Gauge(
            "dvt_outbox_depth", "Store outbox rows not yet taken by a service process (read "
            "at scrape time).", registry=r)
        self.outbox_oldest_age = Gauge(
            "dvt_outbox_oldest_age_seconds", "Age of the oldest outbox row not yet taken, 0 "
            "when there is none (read at scrape time).", registry=r)
        self.limit_rejections = Counter(
            "dvt_limit_rejections", "Requests refused by a tenant limit, by tenant (the first "
            f"{MAX_TENANTS} tenants seen, then 'other') and kind.", ["tenant", "kind"],
            registry=r)
        self.queue_depth = Gauge(
            "dvt_admission_queue_depth", "Runs waiting in a tenant's admission queue, by tenant "
            f"(the first {MAX_TENANTS} tenants seen, then 'other'; read at scrape time).",
            ["tenant"], registry=r)
        self.sse_clients = Gauge(
            "dvt_sse_clients", "Event-stream clients connected.", registry=r)
        self.sse_followers = Gauge(
            "dvt_sse_tenant_followers", "Tenants whose events the stream hub is reading.",
            registry=r)
        self.sse_queued = Gauge(
            "dvt_sse_queued_events", "Events queued for tenant-stream clients, all clients.",
            registry=r)
        self.sse_dropped = Counter(
            "dvt_sse_clients_dropped", "Tenant-stream clients dropped for falling behind.",
            registry=r)
        self.webhook_attempts = Counter(
            "dvt_webhook_attempts", "Webhook delivery attempts, by outcome (delivered, retry,"
            " failed, refused).", ["outcome"], registry=r)
        self.usage_queries = Counter(
            "dvt_usage_queries", "Usage queries answered, by grouping (plan, run, day).",
            ["group_by"], registry=r)
        self.usage_rows = Counter(
            "dvt_usage_rows_folded", "Usage rows (a run's use on one day) folded from the log "
            "to answer usage queries.", registry=r)
        self.budget_crossings = Counter(
            "dvt_budget_crossings", "Monthly budget thresholds tenants crossed (each once per "
            "tenant and month), by threshold percent.", ["threshold"], registry=r)
        self.webhooks_disabled = Counter(
            "dvt_webhooks_disabled", "Webhooks the service disabled (410 or failing too long).",
            registry=r)
        self.engine_up = Gauge(
            "dvt_engine_up", "1 when this process's engine answered its last health probe, "
            "else 0 (probed at scrape time; the reference engine is in-process: always 1).",
            ["engine"], registry=r)

    def start_series(self, engine: str) -> None:
        """Create the served engine's series at zero, so rates work from the first scrape."""
        label = self.engine_label(engine)
        self.runs_started.labels(label)
        self.runs_active.labels(label)
        for status in ("COMPLETED", "FAILED", "CANCELLED"):
            self.runs_finished.labels(status, label)

    def limit_rejected(self, tenant_id: str, kind: str) -> None:
        """Count one request refused by a tenant limit of ``kind`` (one of LIMIT_KINDS)."""
        if kind not in LIMIT_KINDS:
            raise ValueError(f"unknown limit kind {kind!r}")
        self.limit_rejections.labels(self.tenant_label(tenant_id), kind).inc()

    def usage_query(self, group_by: str, rows: int) -> None:
        """Count one usage query and the rows folded to answer it."""
        self.usage_queries.labels(group_by if group_by in ("plan", "run", "day") else "other"
                                  ).inc()
        self.usage_rows.inc(rows)

    def budget_crossed(self, threshold: int) -> None:
        """Count one budget threshold crossing (80 or 100 percent)."""
        self.budget_crossings.labels(str(threshold)).inc()

    def queue_depths(self, depths: dict[str, int]) -> None:
        """Set the queue-depth series from one read of every tenant's queue."""
        totals: dict[str, int] = {}
        for tenant, depth in depths.items():
            label = self.tenant_label(tenant)
            totals[label] = totals.get(label, 0) + depth
        for sample in next(iter(self.queue_depth.collect())).samples:
            totals.setdefault(sample.labels["tenant"], 0)  # a drained queue reads 0
        for label, depth in totals.items():
            self.queue_depth.labels(label).set(depth)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
