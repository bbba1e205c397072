"""The SDKs' generated files match docs/openapi.json (regenerated with the pinned tools)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvt_api.sdkgen import (
    GO_TYPES,
    TS_TYPES,
    Generated,
    SdkToolError,
    generate,
    go_types,
    stale,
)


def test_generated_sdk_files_are_fresh(tmp_path: Path) -> None:
    try:
        files = generate(tmp_path)
    except SdkToolError as exc:
        pytest.fail(str(exc))
    assert {f.path for f in files} == {TS_TYPES, GO_TYPES}
    assert "SignalBody" in files[0].text
    assert "type SignalBody struct" in files[1].text
    assert stale(files) == [], "regenerate with `python -m dvt_api.sdkgen`"


def test_a_changed_generated_file_is_reported_stale() -> None:
    text = TS_TYPES.read_text(encoding="utf-8")
    assert stale([Generated(TS_TYPES, text)]) == []
    assert stale([Generated(TS_TYPES, text + "// changed\n")]) == [TS_TYPES]


def test_a_missing_toolchain_is_an_error_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no go, node or npm
    with pytest.raises(SdkToolError, match="go is not on PATH"):
        go_types(tmp_path)
