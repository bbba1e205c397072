"""Reading a ``postgresql://`` store URL into connection settings and store options."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dvt_engine.errors import UsageError
from dvt_engine.identifiers import identifier_problem

SCHEMES = ("postgresql", "postgres")
DEFAULT_SCHEMA = "dvt"

# Options dvt reads from the URL's query; everything else is passed to libpq untouched.
_OPTIONS = ("schema", "pool_min", "pool_max", "migrate", "outbox", "poll_interval",
            "fallback_interval", "timeout")


@dataclass(frozen=True)
class StoreConfig:
    """Where the store lives and how it behaves."""

    conninfo: str
    schema: str = DEFAULT_SCHEMA
    pool_min: int = 1
    pool_max: int = 10
    migrate: bool = True
    outbox: bool = True
    #: Seconds between a tenant follower's re-reads while committed events wait behind an
    #: older transaction still in progress (no notification says when that one ends).
    poll_interval: float = 1.0
    #: Seconds a follower waits for a notification, with the listener connected and nothing
    #: held back, before it re-reads the log anyway (a safety net, not the delivery path).
    fallback_interval: float = 30.0
    #: Seconds an operation keeps retrying through lost connections before STORE_UNAVAILABLE.
    timeout: float = 15.0

    def redacted(self) -> str:
        """The connection URL without its password, for messages."""
        parts = urlsplit(self.conninfo)
        if parts.password is None:
            return self.conninfo
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"store URL option {name} must be true or false, got {value!r}")


def _number(name: str, value: str, kind: type[int] | type[float]) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise UsageError(f"store URL option {name} must be a number, got {value!r}") from None
    if number <= 0 and name != "pool_min":
        raise UsageError(f"store URL option {name} must be positive, got {value!r}")
    return number


def parse_store_url(url: str) -> StoreConfig:
    """Split dvt's options (``schema``, ``pool_min``, ...) off a PostgreSQL URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise UsageError(f"not a PostgreSQL store URL: scheme {parts.scheme!r}")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OPTIONS:
            ours[key] = value
        else:
            theirs.append((key, value))
    conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(theirs)))
    schema = ours.get("schema", DEFAULT_SCHEMA)
    problem = identifier_problem(schema)
    if problem is not None or len(schema) > 63:
        raise UsageError(
            f"store URL option schema is not a usable schema name: {problem or 'too long'}"
        )
    pool_min = int(_number("pool_min", ours.get("pool_min", "1"), int))
    pool_max = int(_number("pool_max", ours.get("pool_max", "10"), int))
    if pool_min > pool_max:
        raise UsageError("store URL option pool_min must not exceed pool_max")
    return StoreConfig(
        conninfo=conninfo,
        schema=schema,
        pool_min=pool_min,
        pool_max=pool_max,
        migrate=_flag("migrate", ours.get("migrate", "true")),
        outbox=_flag("outbox", ours.get("outbox", "true")),
        poll_interval=_number("poll_interval", ours.get("poll_interval", "1.0"), float),
        fallback_interval=_number("fallback_interval", ours.get("fallback_interval", "30"),
                                  float),
        timeout=_number("timeout", ours.get("timeout", "15"), float),
    )
