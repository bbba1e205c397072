"""docs/errors.md is generated from dvt_engine.errors and must list every code as it is now."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvt_cli import errors_doc
from dvt_engine.errors import ERROR_CLASSES, ErrorCode


def test_errors_doc_is_up_to_date() -> None:
    current = errors_doc.DOC_PATH.read_text(encoding="utf-8")
    assert current == errors_doc.render(), (
        "docs/errors.md is stale: run `python -m dvt_cli.errors_doc` (or `nox -s docs`)"
    )


def test_every_code_has_a_class_and_a_row() -> None:
    text = errors_doc.render()
    for code in ErrorCode:
        assert code in ERROR_CLASSES, f"{code} has no error class"
        assert f"| `{code}` | `{ERROR_CLASSES[code].__name__}` |" in text


def test_contract_codes_are_all_defined() -> None:
    defined = {str(c) for c in ErrorCode}
    assert defined >= errors_doc.CONTRACT_CODES, errors_doc.CONTRACT_CODES - defined


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "errors.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert errors_doc.main(["--check", "--path", str(stale)]) == 1
    assert errors_doc.main(["--path", str(stale)]) == 0
    assert errors_doc.main(["--check", "--path", str(stale)]) == 0


def test_every_code_belongs_to_exactly_one_family() -> None:
    import dvt_engine
    from dvt_engine.errors import FAMILIES, family_of

    for code in ErrorCode:
        cls = ERROR_CLASSES[code]
        owners = [f for f in FAMILIES if issubclass(cls, f)]
        assert len(owners) == 1, f"{code} belongs to {owners}"
        assert family_of(cls) is owners[0]
        assert f"## {owners[0].__name__}" in errors_doc.render()
    for family in FAMILIES:
        assert getattr(dvt_engine, family.__name__) is family
        assert "code" not in vars(family)


def test_a_family_catches_its_codes() -> None:
    from dvt_engine import RunError, SignalError
    from dvt_engine.errors import RunNotFound, SignalUnauthorized

    with pytest.raises(SignalError) as caught:
        raise SignalUnauthorized("no")
    assert caught.value.code == ErrorCode.SIGNAL_UNAUTHORIZED
    assert not issubclass(RunNotFound, SignalError)
    assert issubclass(RunNotFound, RunError)
