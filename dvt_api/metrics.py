"""Prometheus metrics of the service (names in docs/api.md), in a registry per app.

Labels are bounded: route templates (never raw paths), methods, status codes and engine names;
never a tenant id, run id or key.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ApiMetrics:
    """The service's instruments, registered in their own CollectorRegistry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "dvt_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=self.registry)
        self.http_duration = Histogram(
            "dvt_http_request_duration_seconds", "Time to answer an HTTP request (headers).",
            ["method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.runs_started = Counter(
            "dvt_runs_started", "Runs created through the API, by engine.", ["engine"],
            registry=self.registry)
        self.sse_clients = Gauge(
            "dvt_sse_clients", "Event-stream clients connected.", registry=self.registry)
        self.sse_followers = Gauge(
            "dvt_sse_tenant_followers", "Tenants whose events the stream hub is reading.",
            registry=self.registry)
        self.sse_queued = Gauge(
            "dvt_sse_queued_events", "Events queued for tenant-stream clients, all clients.",
            registry=self.registry)
        self.sse_dropped = Counter(
            "dvt_sse_clients_dropped", "Tenant-stream clients dropped for falling behind.",
            registry=self.registry)
        self.webhook_attempts = Counter(
            "dvt_webhook_attempts", "Webhook delivery attempts, by outcome (delivered, retry,"
            " failed, refused).", ["outcome"], registry=self.registry)
        self.webhooks_disabled = Counter(
            "dvt_webhooks_disabled", "Webhooks the service disabled (410 or failing too long).",
            registry=self.registry)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
