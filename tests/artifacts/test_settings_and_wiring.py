"""Opening artifact stores from URLs and settings, and the default every host surface gets."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import CLI_ENV

from dvt_artifacts.local import LocalArtifactStore
from dvt_artifacts.s3 import S3ArtifactStore
from dvt_engine import Client, HandlerRegistry, PlanBuilder
from dvt_engine.errors import ArtifactStoreUnavailable, StoreNotFound, UsageError
from dvt_engine.plugins import open_artifact_store, open_configured_artifact_store
from dvt_engine.ports import StepContext, StepResult
from dvt_engine.secrets import MappingSecretsProvider
from dvt_engine.settings import ArtifactStoreSettings
from dvt_engine.stores.memory_artifacts import MemoryArtifactStore
from dvt_local.s3 import S3Server


def _resolved(path: Path) -> Path:
    return path.resolve()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DVT_ARTIFACTS_URL", "DVT_ARTIFACTS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_default_is_the_local_directory_under_dvt_home(home: Path) -> None:
    assert ArtifactStoreSettings().store_url() == (home / "artifacts").resolve().as_uri()


def test_the_url_comes_from_the_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVT_ARTIFACTS_URL", "s3://bucket/prefix")
    monkeypatch.setenv("DVT_ARTIFACTS_ENDPOINT_URL", "http://127.0.0.1:9")
    settings = ArtifactStoreSettings()
    assert settings.store_url() == "s3://bucket/prefix"
    assert settings.store_options() == {"endpoint_url": "http://127.0.0.1:9"}


def test_a_credential_in_the_url_is_refused() -> None:
    with pytest.raises(UsageError) as caught:
        ArtifactStoreSettings(url="s3://key:hunter2@bucket/prefix")
    assert "hunter2" not in str(caught.value)


async def test_an_unknown_scheme_names_the_installed_ones() -> None:
    with pytest.raises(StoreNotFound) as caught:
        await open_artifact_store("gopher://x/y")
    assert set(caught.value.details["installed"]) >= {"file", "memory", "s3"}


async def test_each_scheme_opens_its_backend(tmp_path: Path) -> None:
    assert isinstance(await open_artifact_store("memory://"), MemoryArtifactStore)
    local = await open_artifact_store(tmp_path.as_uri())
    assert isinstance(local, LocalArtifactStore)
    assert local.directory == _resolved(tmp_path)
    with pytest.raises(UsageError):
        await open_artifact_store("file://otherhost/srv/artifacts")


async def test_s3_credentials_are_secret_references_resolved_on_open(
    dvt_s3_server: S3Server, dvt_s3_artifacts_url: str,
) -> None:
    options = dvt_s3_server.client_options()
    settings = ArtifactStoreSettings(
        url=dvt_s3_artifacts_url, endpoint_url=options["endpoint_url"],
        access_key_id_ref="vault:s3/id", secret_access_key_ref="vault:s3/secret")
    assert options["secret_access_key"] not in repr(settings)
    secrets = MappingSecretsProvider({"vault:s3/id": options["access_key_id"],
                                      "vault:s3/secret": options["secret_access_key"]})
    store = await open_artifact_store(settings, secrets=secrets)
    assert isinstance(store, S3ArtifactStore)
    ref = await store.put(b"through secret refs", kind="blob")
    assert ref.uri.startswith(dvt_s3_artifacts_url + "/sha256/")
    assert await store.get(ref) == b"through secret refs"


async def test_a_wrong_secret_is_a_retryable_unavailable_that_never_shows_the_secret(
    dvt_s3_server: S3Server, dvt_s3_artifacts_url: str,
) -> None:
    options = {**dvt_s3_server.client_options(), "secret_access_key": "wrong-secret-7f3a"}
    store = await open_artifact_store(dvt_s3_artifacts_url, **options)
    with pytest.raises(ArtifactStoreUnavailable) as caught:
        await store.put(b"refused", kind="blob")
    assert caught.value.retryable
    shown = json.dumps(caught.value.to_dict()) + str(caught.value)
    assert "wrong-secret-7f3a" not in shown
    assert dvt_s3_server.secret_access_key not in shown


async def test_configured_settings_must_open(home: Path) -> None:
    with pytest.raises(StoreNotFound):
        await open_configured_artifact_store(ArtifactStoreSettings(url="gopher://x"))
    default = await open_configured_artifact_store()
    assert isinstance(default, LocalArtifactStore)
    assert default.directory == _resolved(home / "artifacts")


async def test_client_connect_defaults_to_the_local_store_under_dvt_home(home: Path) -> None:
    registry = HandlerRegistry()

    @registry.handler("export")
    async def export(ctx: StepContext) -> StepResult:
        return StepResult(artifacts=[await ctx.artifacts.put(b"rows", kind="csv")])

    async with await Client.connect(tenant="t", registry=registry) as client:
        assert isinstance(client.artifacts, LocalArtifactStore)
        plan = PlanBuilder("p", "1").step("e", "export").build()
        snapshot = await (await client.start_run(plan)).result(timeout=60)
    assert snapshot.status == "COMPLETED"
    digest = hashlib.sha256(b"rows").hexdigest()
    stored = home / "artifacts" / "sha256" / digest[:2] / digest
    assert stored.read_bytes() == b"rows"
    assert snapshot.step("e").artifacts[0].uri == stored.as_uri()


async def test_client_connect_takes_settings_or_a_store(home: Path) -> None:
    async with await Client.connect(
        tenant="t", artifacts=ArtifactStoreSettings(url="memory://")
    ) as client:
        assert isinstance(client.artifacts, MemoryArtifactStore)
    given = MemoryArtifactStore()
    async with await Client.connect(tenant="t", artifacts=given) as client:
        assert client.artifacts is given


def test_dvt_run_puts_into_the_local_store_under_dvt_home(tmp_path: Path) -> None:
    (tmp_path / "export_steps.py").write_text(
        "from dvt_engine.ports import StepResult\n"
        "from dvt_engine.steps import step_handler\n\n"
        "@step_handler('report.export')\n"
        "async def export(ctx):\n"
        "    ref = await ctx.artifacts.put(b'north,1200\\n', kind='report')\n"
        "    return StepResult(artifacts=[ref])\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({
        "metadata": {"planId": "r", "planVersion": "1", "schemaVersion": "v1.2"},
        "steps": [{"stepId": "export", "kind": "report.export"}]}))
    env = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    env.update({"DVT_HOME": str(tmp_path / "home"), "DVT_ENGINE": "reference",
                "DVT_HANDLERS": "export_steps"})
    done = subprocess.run([sys.executable, "-m", "dvt_cli", "run", str(plan), "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stderr
    (artifact,) = json.loads(done.stdout)["snapshot"]["steps"][0]["artifacts"]
    digest = hashlib.sha256(b"north,1200\n").hexdigest()
    stored = (tmp_path / "home" / "artifacts" / "sha256" / digest[:2] / digest).resolve()
    assert artifact["uri"] == stored.as_uri()
    assert stored.read_bytes() == b"north,1200\n"


async def test_the_http_service_opens_its_artifact_store(home: Path) -> None:
    from dvt_api import ApiSettings
    from dvt_api.metrics import ApiMetrics
    from dvt_api.services import open_services

    async with open_services(ApiSettings(dev=True), None, ApiMetrics()) as services:
        found = getattr(services.engine, "artifacts", None)
        assert isinstance(found, LocalArtifactStore)
        assert found.directory == _resolved(home / "artifacts")
    settings = ApiSettings(dev=True, artifacts=ArtifactStoreSettings(url="memory://"))
    async with open_services(settings, None, ApiMetrics()) as services:
        assert isinstance(getattr(services.engine, "artifacts", None), MemoryArtifactStore)
