"""Where the CLI's settings come from: options, then environment variables, then the dev setup."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path

from dvt_engine.errors import UsageError
from dvt_engine.models.signals import Role

DEFAULT_TENANT = "default"
DEFAULT_PROJECT = "default"
DEFAULT_ENVIRONMENT = "dev"
DEFAULT_STORE_URL = "memory://"
# Without DVT_ROLES the local user acts with every role: the CLI cannot vouch for anyone, so a
# shared deployment decides roles through its own Authorizer and sets DVT_ROLES explicitly.
DEFAULT_ROLES: tuple[Role, ...] = (Role.ADMIN, Role.APPROVER)

ENGINE_NAMES = ("reference", "temporal", "conductor")


def dvt_home() -> Path:
    """The directory holding the local dev setup (``DVT_HOME``, default ``~/.dvt``)."""
    return Path(os.environ.get("DVT_HOME") or Path.home() / ".dvt")


def parse_roles(text: str | None) -> tuple[Role, ...]:
    """Roles from a comma-separated list (``admin,approver``); USAGE_ERROR on an unknown one."""
    if text is None:
        return DEFAULT_ROLES
    roles: list[Role] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        try:
            roles.append(Role(part))
        except ValueError:
            raise UsageError(
                f"unknown role {part!r}",
                details={"role": part, "known": [r.value for r in Role],
                         "hint": "Roles are admin, engineer, operator and approver."},
            ) from None
    return tuple(dict.fromkeys(roles))


def default_actor() -> str:
    """The local user's name, used as the actor when none is given."""
    try:
        return getpass.getuser() or "cli"
    except Exception:  # no passwd entry in some containers
        return "cli"


@dataclass(frozen=True)
class Identity:
    """Who owns the runs a command touches."""

    tenant: str = DEFAULT_TENANT
    project: str = DEFAULT_PROJECT
    environment: str = DEFAULT_ENVIRONMENT


@dataclass(frozen=True)
class EngineAddresses:
    """How to reach external engine servers; None means "use or start the local dev server"."""

    temporal_address: str | None = None
    temporal_namespace: str | None = None
    temporal_task_queue: str | None = None
    conductor_url: str | None = None


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to open a store and an engine."""

    store_url: str | None = None
    engine: str | None = None
    identity: Identity = field(default_factory=Identity)
    addresses: EngineAddresses = field(default_factory=EngineAddresses)
    json: bool = False

    def with_dev(self, store_url: str | None, addresses: EngineAddresses) -> Settings:
        """Fill what the user left open from the running dev setup."""
        a = self.addresses
        merged = EngineAddresses(
            temporal_address=a.temporal_address or addresses.temporal_address,
            temporal_namespace=a.temporal_namespace or addresses.temporal_namespace,
            temporal_task_queue=a.temporal_task_queue or addresses.temporal_task_queue,
            conductor_url=a.conductor_url or addresses.conductor_url,
        )
        return replace(self, store_url=self.store_url or store_url, addresses=merged)


def installed_engines() -> list[str]:
    """Engine names registered through the ``dvt.engines`` entry point group."""
    return sorted({ep.name for ep in entry_points(group="dvt.engines")})


def engine_importable(name: str) -> bool:
    """True when the engine's entry point is registered and its module imports."""
    for ep in entry_points(group="dvt.engines", name=name):
        try:
            ep.load()
        except Exception:
            return False
        return True
    return False


def choose_engine(explicit: str | None) -> tuple[str, str | None]:
    """The engine to use and, when dvt fell back, a one-line notice saying why.

    Temporal is the default once its adapter is installed; without it dvt runs plans on the
    in-process reference engine.
    """
    if explicit:
        return explicit, None
    if engine_importable("temporal"):
        return "temporal", None
    return "reference", (
        "dvt: the Temporal adapter is not installed (pip install 'dvt[temporal]'); "
        "running on the in-process reference engine"
    )
