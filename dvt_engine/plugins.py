"""Finding engines and stores by name through entry points.

Groups: ``dvt.engines`` (by name), ``dvt.stores`` and ``dvt.artifact_stores`` (by URL scheme).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from dvt_engine.artifacts import ArtifactStore
from dvt_engine.errors import EngineNotFound, StoreNotFound
from dvt_engine.ports import RunStateStore, SecretsProvider, WorkflowEngine
from dvt_engine.secrets import EnvSecretsProvider
from dvt_engine.settings import ArtifactStoreSettings, EngineSettings, StoreSettings

ENGINE_GROUP = "dvt.engines"
STORE_GROUP = "dvt.stores"
ARTIFACT_STORE_GROUP = "dvt.artifact_stores"


def available_engines() -> list[str]:
    """Names of the installed engines."""
    return sorted({ep.name for ep in entry_points(group=ENGINE_GROUP)})


def available_stores() -> list[str]:
    """URL schemes of the installed stores."""
    return sorted({ep.name for ep in entry_points(group=STORE_GROUP)})


def engine_class(name: str) -> type[WorkflowEngine]:
    """The engine class registered under ``name``."""
    for ep in entry_points(group=ENGINE_GROUP, name=name):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, WorkflowEngine)):
            raise EngineNotFound(f"entry point {name!r} is not a WorkflowEngine")
        return cls
    raise EngineNotFound(
        f"no engine named {name!r} is installed",
        details={"engine": name, "installed": available_engines()},
    )


def open_engine(
    name: str | EngineSettings, *, store: RunStateStore, **options: Any
) -> WorkflowEngine:
    """Open an engine over ``store``: from typed settings, or by name with keyword options.

    ``open_engine(TemporalSettings(address=...), store=store, registry=registry)`` finds the
    adapter through its entry point and hands it the settings; host objects (registry,
    authorizer, secrets, uri_policy, fetchers) go as keyword arguments either way.
    """
    if isinstance(name, EngineSettings):
        cls = engine_class(name.engine_name)
        return cls(store=store, **{**name.engine_kwargs(), **options})  # type: ignore[call-arg]
    cls = engine_class(name)
    return cls(store=store, **options)  # type: ignore[call-arg]


async def open_store(url: str | StoreSettings, **options: Any) -> RunStateStore:
    """Open the store for ``url`` (``memory://``, ``postgresql://...``) and make it ready.

    Typed settings work too: ``open_store(PostgresStoreSettings(url=...))``.

    A store class may offer an async ``open(url, **options)`` classmethod for setup that needs
    I/O (pools, migrations); otherwise it is constructed with ``(url, **options)``.
    """
    if isinstance(url, StoreSettings):
        options = {**url.store_options(), **options}
        url = url.store_url()
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise StoreNotFound(f"store URL {url!r} has no scheme", details={"url": _safe(url)})
    for ep in entry_points(group=STORE_GROUP, name=scheme):
        cls = ep.load()
        opener = getattr(cls, "open", None)
        if opener is not None:
            store = await opener(url, **options)
        else:
            store = cls(url, **options)
        if not isinstance(store, RunStateStore):
            raise StoreNotFound(f"entry point {scheme!r} did not give a RunStateStore")
        return store
    raise StoreNotFound(
        f"no store is installed for {scheme}:// URLs",
        details={"scheme": scheme, "installed": available_stores()},
    )


def available_artifact_stores() -> list[str]:
    """URL schemes of the installed artifact stores."""
    return sorted({ep.name for ep in entry_points(group=ARTIFACT_STORE_GROUP)})


async def open_artifact_store(
    url: str | ArtifactStoreSettings | None = None,
    *,
    secrets: SecretsProvider | None = None,
    **options: Any,
) -> ArtifactStore:
    """Open the artifact store for ``url`` (``file://``, ``s3://``, ``memory://``).

    Typed settings work too; None means ``ArtifactStoreSettings()`` (``DVT_ARTIFACTS_URL``,
    else ``$DVT_HOME/artifacts``). Credentials named by secret references in the settings
    are resolved through ``secrets`` (default: ``env:`` references) and handed to the
    backend only. A backend class may offer an async ``open(url, **options)`` classmethod;
    otherwise it is constructed with ``(url, **options)``.
    """
    if url is None or isinstance(url, ArtifactStoreSettings):
        settings = url if url is not None else ArtifactStoreSettings()
        resolver = secrets if secrets is not None else EnvSecretsProvider()
        resolved = {name: await resolver.resolve(ref)
                    for name, ref in settings.secret_refs().items()}
        options = {**settings.store_options(), **resolved, **options}
        url = settings.store_url()
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise StoreNotFound(f"artifact store URL {url!r} has no scheme",
                            details={"url": _safe(url)})
    for ep in entry_points(group=ARTIFACT_STORE_GROUP, name=scheme):
        cls = ep.load()
        opener = getattr(cls, "open", None)
        store = await opener(url, **options) if opener is not None else cls(url, **options)
        if not isinstance(store, ArtifactStore):
            raise StoreNotFound(f"entry point {scheme!r} did not give an ArtifactStore")
        return store
    raise StoreNotFound(
        f"no artifact store is installed for {scheme}:// URLs",
        details={"scheme": scheme, "installed": available_artifact_stores(),
                 "hint": "install the artifacts extra: pip install 'dvt[artifacts]'"},
    )


async def open_configured_artifact_store(
    settings: ArtifactStoreSettings | None = None, *, secrets: SecretsProvider | None = None
) -> ArtifactStore | None:
    """The artifact store hosts get by default: ``settings`` when given (it must open), else
    ``ArtifactStoreSettings()`` from the environment, which is the local directory
    ``$DVT_HOME/artifacts`` unless ``DVT_ARTIFACTS_URL`` names another.

    Without the ``artifacts`` extra and without configuration there is no store (None): the
    engine then runs without one and a handler using ``ctx.artifacts`` fails with
    ARTIFACT_STORE_NOT_CONFIGURED, while everything else works as before.
    """
    if settings is not None:
        return await open_artifact_store(settings, secrets=secrets)
    configured = ArtifactStoreSettings()
    try:
        return await open_artifact_store(configured, secrets=secrets)
    except (StoreNotFound, ImportError):
        if configured.url is not None:
            raise
        return None


def _safe(url: str) -> str:
    """A URL with any password removed, for error details."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
