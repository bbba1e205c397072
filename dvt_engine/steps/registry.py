"""Which handler runs which step kind: a registry the host builds and passes in, explicitly.

There is no global registry: a host makes a ``HandlerRegistry`` (``registry.register(kind, fn)``
or ``@registry.handler(kind)``), plug-ins arrive through ``dvt.step_handlers`` entry points,
and the registry is handed to the client, engine or worker. Importing a module never changes
what any registry holds.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from dvt_engine.errors import StepKindUnknown, UsageError
from dvt_engine.identifiers import validate_identifier
from dvt_engine.ports import StepContext, StepHandler, StepResult

ENTRY_POINT_GROUP = "dvt.step_handlers"
#: Attribute ``@step_handler`` sets on the handlers it makes, so ``register_module`` finds them.
DECLARED_KIND = "__dvt_step_kind__"

HandlerFunction = Callable[[StepContext], Awaitable[Any]]
"""``async def fn(ctx) -> StepResult | dict | None`` (any other JSON value is the output)."""

HandlerLike = StepHandler | type[StepHandler] | HandlerFunction


class FunctionStepHandler(StepHandler):
    """A StepHandler around an async function; its return value becomes a StepResult."""

    kind = "function"

    def __init__(self, fn: HandlerFunction) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    async def run(self, ctx: StepContext) -> StepResult:
        """Call the function and turn what it returns into a StepResult."""
        return as_step_result(await self.fn(ctx))

    def __repr__(self) -> str:
        return f"<step handler {self.kind!r} {getattr(self.fn, '__qualname__', self.fn)!r}>"


def as_step_result(value: Any) -> StepResult:
    """A handler's return value as a StepResult: None is no output, anything else the output."""
    if isinstance(value, StepResult):
        return value
    return StepResult(output=value)


def as_handler(kind: str, handler: HandlerLike) -> StepHandler:
    """Turn an instance, a StepHandler subclass or an async function into a StepHandler."""
    if isinstance(handler, StepHandler):
        return handler
    if isinstance(handler, type):
        if issubclass(handler, StepHandler):
            return handler()
        raise UsageError(f"handler for {kind!r} is a class but not a StepHandler",
                         details={"kind": kind})
    if inspect.iscoroutinefunction(handler):
        cls = type(f"FunctionStepHandler[{kind}]", (FunctionStepHandler,), {"kind": kind})
        made: StepHandler = cls(handler)
        return made
    raise UsageError(
        f"handler for {kind!r} must be a StepHandler or an async function",
        details={"kind": kind, "got": type(handler).__name__},
    )


class HandlerRegistry:
    """Step kinds mapped to handlers. A kind is registered once unless ``replace=True``."""

    def __init__(self, handlers: Mapping[str, HandlerLike] | None = None) -> None:
        self._handlers: dict[str, StepHandler] = {}
        for kind, handler in (handlers or {}).items():
            self.register(kind, handler)

    def register(self, kind: str, handler: HandlerLike, *, replace: bool = False) -> StepHandler:
        """Register ``handler`` for ``kind`` and return it as a StepHandler."""
        validate_identifier("kind", kind)
        existing = self._handlers.get(kind)
        if existing is not None and existing is handler:
            return existing  # the same object again (a decorated handler that is also a plugin)
        if existing is not None and not replace:
            raise UsageError(
                f"step kind {kind!r} is already registered",
                details={"kind": kind},
            )
        made = as_handler(kind, handler)
        self._handlers[kind] = made
        return made

    def handler(self, kind: str) -> Callable[[HandlerFunction], StepHandler]:
        """Decorator: register ``async def fn(ctx)`` for ``kind`` here; the name is the handler."""
        validate_identifier("kind", kind)

        def decorate(fn: HandlerFunction) -> StepHandler:
            return self.register(kind, fn)

        return decorate

    def register_module(self, module: ModuleType, *, replace: bool = False) -> list[str]:
        """Register the ``@step_handler`` functions a module defines; returns the kinds added."""
        added: list[str] = []
        for value in list(vars(module).values()):
            kind = getattr(value, DECLARED_KIND, None)
            if isinstance(value, StepHandler) and isinstance(kind, str):
                self.register(kind, value, replace=replace)
                added.append(kind)
        return sorted(added)

    def get(self, kind: str) -> StepHandler:
        """The handler for ``kind``; STEP_KIND_UNKNOWN when none is registered."""
        try:
            return self._handlers[kind]
        except KeyError:
            raise StepKindUnknown(
                f"no handler is registered for step kind {kind!r}",
                details={"kind": kind, "known": list(self.kinds())},
            ) from None

    def unregister(self, kind: str) -> None:
        """Forget the handler for ``kind`` (no error when none is registered)."""
        self._handlers.pop(kind, None)

    def kinds(self) -> tuple[str, ...]:
        """The registered kinds, sorted."""
        return tuple(sorted(self._handlers))

    def params_schemas(self) -> dict[str, Mapping[str, Any]]:
        """Kind -> the params JSON Schema its handler declares (kinds without one are left out)."""
        return {kind: schema for kind, handler in sorted(self._handlers.items())
                if (schema := getattr(handler, "params_schema", None)) is not None}

    def copy(self) -> HandlerRegistry:
        """An independent registry with the same handlers."""
        twin = HandlerRegistry()
        twin._handlers = dict(self._handlers)
        return twin

    def __contains__(self, kind: object) -> bool:
        return kind in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def load_entry_points(
        self, entries: Iterable[EntryPoint] | None = None, *, replace: bool = False
    ) -> list[str]:
        """Register the handlers of the ``dvt.step_handlers`` group; returns the kinds added.

        An entry point's name is the kind; its value is a StepHandler subclass, a decorated
        function, or an async function. A name that collides with a registered kind is a
        USAGE_ERROR: a plugin must never silently change what a built-in kind does.
        """
        found = entry_points(group=ENTRY_POINT_GROUP) if entries is None else entries
        added: list[str] = []
        for ep in sorted(found, key=lambda e: e.name):
            try:
                target = ep.load()
            except Exception as exc:
                raise UsageError(
                    f"step handler entry point {ep.name!r} ({ep.value}) cannot be loaded: "
                    f"{type(exc).__name__}",
                    details={"kind": ep.name, "value": ep.value},
                ) from exc
            self.register(ep.name, target, replace=replace)
            added.append(ep.name)
        return added


def step_handler(
    kind: str, registry: HandlerRegistry | None = None
) -> Callable[[HandlerFunction], StepHandler]:
    """Decorator: make ``async def fn(ctx)`` a StepHandler for ``kind``.

    With ``registry`` the handler is registered there. Without it nothing is registered
    anywhere: the handler is only declared, and joins a registry when the host says so
    (``registry.register_module(module)``, the CLI's ``--handlers MODULE``, or a
    ``dvt.step_handlers`` entry point naming it). Prefer ``@registry.handler(kind)``.
    """
    validate_identifier("kind", kind)

    def decorate(fn: HandlerFunction) -> StepHandler:
        made = registry.register(kind, fn) if registry is not None else as_handler(kind, fn)
        setattr(made, DECLARED_KIND, kind)
        return made

    return decorate


def builtin_registry() -> HandlerRegistry:
    """A fresh registry with the built-in kinds only: noop, sleep, echo, fail, approval."""
    from dvt_engine.steps.builtins import BUILTIN_HANDLERS

    return HandlerRegistry(BUILTIN_HANDLERS)


def default_registry(*, entry_points_too: bool = True) -> HandlerRegistry:
    """A fresh registry: the built-ins, then the installed ``dvt.step_handlers`` entry points."""
    registry = builtin_registry()
    if entry_points_too:
        registry.load_entry_points()
    return registry
