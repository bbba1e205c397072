"""The handler registry, its decorator and entry points, the built-in kinds, and secrets."""

from __future__ import annotations

import asyncio
import importlib
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from dvt_engine.errors import (
    IdentifierInvalid,
    SecretNotFound,
    StepCancelled,
    StepFailed,
    StepKindUnknown,
    UsageError,
)
from dvt_engine.models.plan import StepSpec
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.secrets import (
    REDACTED,
    EnvSecretsProvider,
    MappingSecretsProvider,
    redact,
    resolve_refs,
    secret_ref_of,
)
from dvt_engine.steps import (
    BUILTIN_HANDLERS,
    CancelToken,
    FunctionStepHandler,
    HandlerFailure,
    HandlerRegistry,
    RunnerStepContext,
    StepInvocation,
    builtin_registry,
    classify,
    default_registry,
    step_handler,
)

BUILTIN_KINDS = ("approval", "echo", "fail", "noop", "sleep")
WAIT_S = 10.0


def context(
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    engine_attempt: int = 1,
    token: CancelToken | None = None,
    secrets: dict[str, str] | None = None,
) -> RunnerStepContext:
    """A handler's context for a step of ``kind``, without a store (handlers never see one)."""
    step = StepSpec.model_validate({"stepId": "s1", "kind": kind, "params": params or {}})
    inv = StepInvocation(
        tenant_id="t", project_id="p", environment_id="e", run_id="r1", plan_id="pl",
        plan_version="1", step=step, engine_attempt_id=engine_attempt,
    )
    return RunnerStepContext(
        inv, secrets=MappingSecretsProvider(secrets or {}),
        cancel_token=token if token is not None else CancelToken(),
    )


class Constant(StepHandler):
    """A class-based handler."""

    kind = "constant"

    async def run(self, ctx: StepContext) -> StepResult:
        return StepResult(output={"value": 42})


# --- registry -------------------------------------------------------------------------------------


def test_builtin_registry_has_the_contract_kinds() -> None:
    assert builtin_registry().kinds() == BUILTIN_KINDS
    assert tuple(sorted(BUILTIN_HANDLERS)) == BUILTIN_KINDS
    for kind, handler in BUILTIN_HANDLERS.items():
        assert handler.kind == kind


def test_registry_register_get_copy_and_contains() -> None:
    registry = HandlerRegistry()
    made = registry.register("constant", Constant)
    assert isinstance(made, Constant)
    assert registry.get("constant") is made
    assert "constant" in registry
    assert len(registry) == 1
    twin = registry.copy()
    twin.register("noop", BUILTIN_HANDLERS["noop"])
    assert "noop" in twin
    assert "noop" not in registry
    registry.unregister("constant")
    assert "constant" not in registry
    assert "constant" in twin


def test_unknown_kind_is_step_kind_unknown() -> None:
    with pytest.raises(StepKindUnknown) as info:
        builtin_registry().get("dbt.run")
    assert info.value.code == "STEP_KIND_UNKNOWN"
    assert info.value.retryable is False
    assert info.value.details["kind"] == "dbt.run"
    assert info.value.details["known"] == list(BUILTIN_KINDS)


def test_duplicate_kind_is_refused_unless_replaced() -> None:
    registry = builtin_registry()
    with pytest.raises(UsageError) as info:
        registry.register("echo", Constant)
    assert info.value.code == "USAGE_ERROR"
    replaced = registry.register("echo", Constant, replace=True)
    assert registry.get("echo") is replaced
    # Registering the very same object again is harmless.
    assert registry.register("echo", replaced) is replaced


def test_invalid_kind_and_invalid_handlers_are_refused() -> None:
    registry = HandlerRegistry()
    with pytest.raises(IdentifierInvalid):
        registry.register("bad|kind", Constant)

    def not_async(ctx: StepContext) -> None:
        return None

    with pytest.raises(UsageError):
        registry.register("sync", not_async)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        registry.register("cls", dict)  # type: ignore[arg-type]
    assert registry.kinds() == ()


async def test_decorator_with_registry() -> None:
    registry = HandlerRegistry()

    @step_handler("dbt.run", registry=registry)
    async def dbt_run(ctx: StepContext) -> dict[str, Any]:
        """Runs dbt."""
        return {"select": ctx.params["select"]}

    assert isinstance(dbt_run, StepHandler)
    assert isinstance(dbt_run, FunctionStepHandler)
    assert dbt_run.kind == "dbt.run"
    assert dbt_run.__doc__ == "Runs dbt."
    assert registry.get("dbt.run") is dbt_run
    result = await dbt_run.run(context("dbt.run", {"select": "orders"}))
    assert result == StepResult(output={"select": "orders"})


async def test_decorator_without_registry_registers_nothing_anywhere() -> None:
    """Declaring a handler never changes a registry: import order cannot change behaviour."""

    @step_handler("host.kind")
    async def host_kind(ctx: StepContext) -> StepResult:
        return StepResult(output="host", cost_units=3)

    assert isinstance(host_kind, StepHandler)
    assert "host.kind" not in default_registry(entry_points_too=False)
    assert (await host_kind.run(context("host.kind"))).cost_units == 3


def test_declared_handlers_join_a_registry_only_when_the_module_is_named() -> None:
    module = types.ModuleType("host_steps")

    @step_handler("host.load")
    async def load(ctx: StepContext) -> None:
        return None

    async def helper(ctx: StepContext) -> None:  # not declared: never registered
        return None

    module.load = load  # type: ignore[attr-defined]
    module.helper = helper  # type: ignore[attr-defined]
    registry = builtin_registry()
    assert registry.register_module(module) == ["host.load"]
    assert registry.get("host.load") is load
    assert "helper" not in registry.kinds()


def test_declaring_a_builtin_kind_is_refused_when_registered() -> None:
    module = types.ModuleType("clash")

    @step_handler("echo")
    async def my_echo(ctx: StepContext) -> None:
        return None

    module.my_echo = my_echo  # type: ignore[attr-defined]
    with pytest.raises(UsageError):
        builtin_registry().register_module(module)


async def test_registry_handler_decorator_registers_there() -> None:
    registry = HandlerRegistry()

    @registry.handler("dbt.run")
    async def dbt_run(ctx: StepContext) -> dict[str, str]:
        return {"selected": ctx.params["select"]}

    assert registry.get("dbt.run") is dbt_run
    assert (await dbt_run.run(context("dbt.run", {"select": "x"}))).output == {"selected": "x"}
    with pytest.raises(UsageError):
        registry.register("dbt.run", dbt_run.fn)  # type: ignore[attr-defined]


# --- entry points ---------------------------------------------------------------------------------


def _install_plugin(root: Path, module: str, entries: dict[str, str]) -> None:
    """A real installed distribution on sys.path whose entry points name handlers."""
    (root / f"{module}.py").write_text(textwrap.dedent('''
        from dvt_engine.ports import StepContext, StepHandler, StepResult
        from dvt_engine.steps import HandlerRegistry, step_handler

        class SparkSubmit(StepHandler):
            kind = "spark.submit"

            async def run(self, ctx: StepContext) -> StepResult:
                return StepResult(output={"app": ctx.params.get("app")})

        _private = HandlerRegistry()

        @step_handler("dbt.test", registry=_private)
        async def dbt_test(ctx):
            return {"tested": True}

        async def plain(ctx):
            return "plain"
    '''), "utf-8")
    dist = root / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n",
                                   "utf-8")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (dist / "entry_points.txt").write_text(f"[dvt.step_handlers]\n{lines}\n", "utf-8")


async def test_entry_point_handlers_are_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "dvt_test_plugin_ok"
    _install_plugin(tmp_path, module, {
        "plugin.submit": f"{module}:SparkSubmit",
        "dbt.test": f"{module}:dbt_test",
        "plain.fn": f"{module}:plain",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        registry = default_registry()
        assert {"plugin.submit", "dbt.test", "plain.fn"} <= set(registry.kinds())
        assert set(BUILTIN_KINDS) <= set(registry.kinds())
        spark = await registry.get("plugin.submit").run(context("plugin.submit", {"app": "x"}))
        assert spark.output == {"app": "x"}
        assert (await registry.get("dbt.test").run(context("dbt.test"))).output == {
            "tested": True}
        assert (await registry.get("plain.fn").run(context("plain.fn"))).output == "plain"
    finally:
        sys.modules.pop(module, None)


def test_entry_point_colliding_with_builtin_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "dvt_test_plugin_clash"
    _install_plugin(tmp_path, module, {"echo": f"{module}:SparkSubmit"})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(UsageError) as info:
            default_registry()
        assert "echo" in str(info.value)
    finally:
        sys.modules.pop(module, None)


def test_entry_point_that_cannot_load_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "dvt_test_plugin_broken"
    _install_plugin(tmp_path, module, {"broken.kind": f"{module}:does_not_exist"})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(UsageError) as info:
            default_registry()
        assert info.value.details["kind"] == "broken.kind"
    finally:
        sys.modules.pop(module, None)


# --- built-in kinds -------------------------------------------------------------------------------


async def test_noop_and_echo() -> None:
    assert (await BUILTIN_HANDLERS["noop"].run(context("noop"))).output is None
    params = {"a": 1, "ref": {"secretRef": "vault:x"}}
    echoed = await BUILTIN_HANDLERS["echo"].run(context("echo", params))
    assert echoed.output == params  # references are echoed as references, never resolved


async def test_sleep_returns_after_its_time_and_validates_ms() -> None:
    assert (await BUILTIN_HANDLERS["sleep"].run(context("sleep", {"ms": 1}))).output is None
    for bad in (-1, "10", True, float("inf")):
        with pytest.raises(StepFailed) as info:
            await BUILTIN_HANDLERS["sleep"].run(context("sleep", {"ms": bad}))
        assert info.value.retryable is False


async def test_sleep_stops_when_cancelled() -> None:
    token = CancelToken()
    task = asyncio.create_task(
        BUILTIN_HANDLERS["sleep"].run(context("sleep", {"ms": 3_600_000}, token=token)))
    token.cancel("stop")
    with pytest.raises(StepCancelled) as info:
        await asyncio.wait_for(task, WAIT_S)
    assert "stop" in info.value.message


async def test_fail_fails_engine_attempts_up_to_fail_times() -> None:
    fail = BUILTIN_HANDLERS["fail"]
    params = {"failTimes": 2, "code": "FLAKY", "message": "try again"}
    for attempt in (1, 2):
        with pytest.raises(HandlerFailure) as info:
            await fail.run(context("fail", params, engine_attempt=attempt))
        assert (info.value.code, info.value.message, info.value.retryable) == (
            "FLAKY", "try again", True)
    assert (await fail.run(context("fail", params, engine_attempt=3))).output == {
        "failedAttempts": 2}


async def test_fail_defaults_and_always_fails_without_fail_times() -> None:
    fail = BUILTIN_HANDLERS["fail"]
    for attempt in (1, 5, 50):
        with pytest.raises(HandlerFailure) as info:
            await fail.run(context("fail", {}, engine_attempt=attempt))
        assert (info.value.code, info.value.retryable) == ("STEP_FAILED", True)
    with pytest.raises(HandlerFailure) as info:
        await fail.run(context("fail", {"retryable": False}))
    assert info.value.retryable is False


async def test_fail_with_bad_params_is_not_retryable() -> None:
    fail = BUILTIN_HANDLERS["fail"]
    for params in ({"failTimes": -1}, {"failTimes": "2"}, {"retryable": "yes"}, {"code": ""}):
        with pytest.raises(StepFailed) as info:
            await fail.run(context("fail", params))
        assert info.value.retryable is False, params


async def test_approval_handler_refuses_to_run() -> None:
    with pytest.raises(UsageError):
        await BUILTIN_HANDLERS["approval"].run(context("approval"))


def test_classify_errors() -> None:
    retry = {"maxAttempts": 3, "nonRetryableErrorCodes": ["BAD_SQL", "STEP_FAILED"]}
    step = StepSpec.model_validate({"stepId": "s", "kind": "k", "retry": retry})
    plain = StepSpec.model_validate({"stepId": "s", "kind": "k"})
    assert classify(HandlerFailure("BAD_SQL", "x"), step).retryable is False
    assert classify(HandlerFailure("OTHER", "x"), step).retryable is True
    assert classify(RuntimeError("x"), step).retryable is False
    assert classify(RuntimeError("x"), plain).model_dump() == {
        "code": "STEP_FAILED", "message": "RuntimeError: x", "retryable": True}
    assert classify(RuntimeError(), plain).message == "RuntimeError"
    long = classify(RuntimeError("y" * 5000), plain)
    assert len(long.message) == 2000


# --- context and secrets --------------------------------------------------------------------------


async def test_context_secret_resolution_is_cached_and_tracked() -> None:
    ctx = context("k", {"pw": {"secretRef": "vault:a"}, "n": 1}, secrets={"vault:a": "A1"})
    assert await ctx.resolve_params() == {"pw": "A1", "n": 1}
    assert ctx.params == {"pw": {"secretRef": "vault:a"}, "n": 1}
    assert await ctx.secret("vault:a") == "A1"
    assert ctx.resolved_secrets == ("A1",)
    with pytest.raises(SecretNotFound):
        await ctx.secret("vault:missing")


async def test_context_sleep_and_check_cancelled() -> None:
    token = CancelToken()
    ctx = context("k", token=token)
    await ctx.sleep(0)
    ctx.check_cancelled()
    token.cancel()
    assert ctx.cancelled
    with pytest.raises(StepCancelled):
        ctx.check_cancelled()
    with pytest.raises(StepCancelled):
        await ctx.sleep(3600)


async def test_env_secrets_provider() -> None:
    env = {"DVT_SECRET_DB": "pw1", "HOME": "/root"}
    provider = EnvSecretsProvider(environ=env)
    assert await provider.resolve("env:HOME") == "/root"
    limited = EnvSecretsProvider(prefix="DVT_SECRET_", environ=env)
    assert await limited.resolve("env:DVT_SECRET_DB") == "pw1"
    for ref in ("env:HOME", "env:DVT_SECRET_NONE", "vault:db", "env:"):
        with pytest.raises(SecretNotFound) as info:
            await limited.resolve(ref)
        assert info.value.code == "SECRET_NOT_FOUND"
        assert "pw1" not in str(info.value.to_dict())


async def test_env_secrets_provider_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DVT_TEST_SECRET_X", "from-env")
    assert await EnvSecretsProvider().resolve("env:DVT_TEST_SECRET_X") == "from-env"


async def test_mapping_secrets_provider() -> None:
    provider = MappingSecretsProvider({"vault:a": "1"})
    assert await provider.resolve("vault:a") == "1"
    with pytest.raises(SecretNotFound):
        await provider.resolve("vault:b")


async def test_resolve_refs_only_touches_exact_references() -> None:
    async def resolve(ref: str) -> str:
        return f"<{ref}>"

    value = {
        "a": {"secretRef": "x"},
        "b": {"secretRef": "y", "other": 1},  # not a reference: two keys
        "c": [{"secretRef": "z"}, {"secretRef": ""}],
        "d": ({"secretRef": "w"},),
    }
    assert await resolve_refs(value, resolve) == {
        "a": "<x>", "b": {"secretRef": "y", "other": 1},
        "c": ["<z>", {"secretRef": ""}], "d": ["<w>"],
    }
    assert secret_ref_of({"secretRef": "q"}) == "q"
    assert secret_ref_of({"secretRef": 3}) is None


def test_redact_masks_every_occurrence_longest_first() -> None:
    value = {"k": ["abc-abcdef", {"abcdef": "x abc y"}], "n": 3, "none": None}
    assert redact(value, ["abc", "abcdef", ""]) == {
        "k": [f"{REDACTED}-{REDACTED}", {REDACTED: f"x {REDACTED} y"}], "n": 3, "none": None}
    assert redact(value, []) is value
