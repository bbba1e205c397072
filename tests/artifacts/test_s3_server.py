"""The local S3Proxy server: started from the pinned jar, loud when it cannot start."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import s3fs

from dvt_local import lifecycle
from dvt_local.s3 import SERVER_JAR, S3Server


def test_the_session_server_runs_the_pinned_jar_with_its_own_keys(
    dvt_s3_server: S3Server,
) -> None:
    assert SERVER_JAR.path().is_file()
    assert SERVER_JAR.coordinates == "org.gaul:s3proxy:4.1.0:jar:jar-with-dependencies"
    assert dvt_s3_server.healthy()
    assert dvt_s3_server.properties_path.stat().st_mode & 0o077 == 0
    options = dvt_s3_server.client_options()
    wrong = s3fs.S3FileSystem(key=options["access_key_id"], secret="not-the-secret",
                              endpoint_url=options["endpoint_url"], skip_instance_cache=True)
    with pytest.raises(PermissionError):
        wrong.call_s3("list_buckets")


def test_a_server_that_cannot_bind_its_port_fails_with_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = S3Server(data_dir=tmp_path, port=taken.getsockname()[1])
        with pytest.raises(lifecycle.LocalServerError) as caught:
            server.start()
    assert "S3Proxy" in caught.value.message
    assert "log tail" in caught.value.message
    assert server.process is None


def test_without_the_jar_and_without_maven_the_error_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DVT_MAVEN_REPO", str(tmp_path / "empty-repo"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(lifecycle.LocalServerError) as caught:
        S3Server(data_dir=tmp_path / "s3").start()
    assert "Maven (mvn)" in caught.value.message
    assert caught.value.details["jar"].startswith(str(tmp_path / "empty-repo"))
