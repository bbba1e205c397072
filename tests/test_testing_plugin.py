"""The dvt pytest plugin as a host sees it: the host example of docs/testing.md, its files and its
``pytest`` commands taken from the page, run by pytest in a new process with nothing but the
installed ``pytest11`` entry point providing the fixtures."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
#: A fenced block whose first line names the file it is: ``# greeter.py``.
FILE_BLOCK = re.compile(r"```(?:python|toml)\n# (\S+)\n(.*?)```", flags=re.S)
COMMAND_BLOCK = re.compile(r"```console\n(.*?)```", flags=re.S)

#: What the example's own tests are, so each command must report them passed.
EXAMPLE_TESTS = 1

CHOSEN_TEST = '''
from dvt_engine import Client, PlanBuilder

PLAN = PlanBuilder("who", "1").step("greet", "greeter.greet", params={{"name": "x"}}).build()


async def test_the_command_chose_the_store_and_engine(dvt_client: Client) -> None:
    snapshot = await (await dvt_client.start_run(PLAN)).result(timeout=60)
    assert snapshot.engine_run_ref["provider"] == {engine!r}
    assert type(dvt_client.store).__name__ == {store_class!r}
    assert dvt_client.tenant == "test"


async def test_each_test_gets_a_fresh_store(dvt_client: Client) -> None:
    assert (await dvt_client.list_runs()).items == ()
'''

STORE_CLASSES = {"memory": "MemoryRunStateStore", "postgres": "PostgresRunStateStore"}


def example_files() -> dict[str, str]:
    """The example's files, by name, exactly as docs/testing.md shows them."""
    files = {name: body for name, body in FILE_BLOCK.findall(DOC.read_text(encoding="utf-8"))}
    assert set(files) == {"greeter.py", "pyproject.toml", "conftest.py", "test_greet.py"}
    return files


def example_commands() -> list[list[str]]:
    """The ``$ pytest ...`` lines of the page's console block, as argument lists."""
    blocks = COMMAND_BLOCK.findall(DOC.read_text(encoding="utf-8"))
    lines = [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]
    commands = [shlex.split(line) for line in lines]
    assert commands
    assert all(c[0] == "pytest" for c in commands)
    return [c[1:] for c in commands]


def _choice(args: list[str], what: str, default: str) -> str:
    for arg in args:
        if arg.startswith(f"--dvt-{what}="):
            return arg.split("=", 1)[1]
    return default


def _write_example(pytester: pytest.Pytester) -> None:
    for name, body in example_files().items():
        (pytester.path / name).write_text(body, encoding="utf-8")


@pytest.mark.parametrize("args", example_commands(), ids=lambda a: " ".join(a) or "defaults")
def test_the_documented_example_passes_with_each_documented_command(
    pytester: pytest.Pytester, args: list[str], request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, engine = _choice(args, "store", "memory"), _choice(args, "engine", "reference")
    # The host's process reuses this session's servers instead of starting its own.
    for env in ("DVT_PG_DSN", "DVT_TEST_TEMPORAL_ADDRESS", "DVT_TEST_CONDUCTOR_URL"):
        monkeypatch.delenv(env, raising=False)
    if store == "postgres":
        monkeypatch.setenv("DVT_PG_DSN", request.getfixturevalue("dvt_postgres_dsn"))
    if engine == "temporal":
        monkeypatch.setenv("DVT_TEST_TEMPORAL_ADDRESS",
                           request.getfixturevalue("dvt_temporal_address"))
    if engine == "conductor":
        monkeypatch.setenv("DVT_TEST_CONDUCTOR_URL", request.getfixturevalue("dvt_conductor_url"))
    _write_example(pytester)
    pytester.makepyfile(test_chosen=CHOSEN_TEST.format(
        engine=engine, store_class=STORE_CLASSES[store]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=EXAMPLE_TESTS + 2)


def test_the_documented_switches_include_postgres_and_temporal() -> None:
    chosen = {(_choice(a, "store", "memory"), _choice(a, "engine", "reference"))
              for a in example_commands()}
    assert {("memory", "reference"), ("postgres", "reference"), ("memory", "temporal"),
            ("postgres", "conductor")} <= chosen


def test_the_ini_option_chooses_and_parametrize_overrides_it(pytester: pytest.Pytester) -> None:
    _write_example(pytester)
    files = example_files()
    pytester.makepyprojecttoml(files["pyproject.toml"] + 'dvt_engine = "conductor"\n')
    pytester.makepyfile(test_greet='''
import pytest

from dvt_engine import Client


async def test_the_ini_names_the_engine(dvt_engine_name: str) -> None:
    assert dvt_engine_name == "conductor"


@pytest.mark.parametrize("dvt_engine_name", ["reference"])
async def test_parametrize_wins(dvt_client: Client) -> None:
    assert dvt_client.engine.name == "reference"
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_an_unknown_engine_name_is_a_usage_error(pytester: pytest.Pytester) -> None:
    _write_example(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--dvt-engine=airflow")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dvt-engine*invalid choice*airflow*"])


def test_an_unknown_store_name_in_the_ini_is_a_usage_error(pytester: pytest.Pytester) -> None:
    _write_example(pytester)
    pytester.makepyprojecttoml(example_files()["pyproject.toml"] + 'dvt_store = "sqlite"\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*dvt_store = 'sqlite': choose one of memory, postgres*"])


def test_without_an_override_the_registry_has_the_builtin_kinds_only(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyprojecttoml(example_files()["pyproject.toml"])
    pytester.makepyfile(test_host='''
from dvt_engine import Client, HandlerRegistry, PlanBuilder


def test_builtins_only(dvt_registry: HandlerRegistry) -> None:
    assert "echo" in dvt_registry and "greeter.greet" not in dvt_registry


async def test_a_builtin_kind_runs(dvt_client: Client) -> None:
    plan = PlanBuilder("p", "1").step("e", "echo", params={"x": 1}).build()
    snapshot = await (await dvt_client.start_run(plan)).result(timeout=60)
    assert snapshot.status == "COMPLETED"
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_fixtures_are_listed(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(example_files()["pyproject.toml"])
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    for name in ("dvt_client", "dvt_registry", "dvt_engine_settings", "dvt_memory_store",
                 "dvt_postgres_store", "dvt_reference_engine", "dvt_temporal_engine",
                 "dvt_temporal_time_skipping", "dvt_conductor_engine"):
        result.stdout.fnmatch_lines([f"{name}*"])
