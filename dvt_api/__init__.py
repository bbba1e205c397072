"""dvt's multi-tenant HTTP service: ``create_app(settings)`` or ``dvt serve``.

A driving adapter over the engine port and the state store: it authenticates API keys, maps
requests to the host API and answers in problem+json when something is refused. It adds no run
semantics of its own.
"""

from dvt_api.app import create_app
from dvt_api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
