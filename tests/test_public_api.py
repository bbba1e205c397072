"""The names `dvt_engine` exports: its lazy map, `__all__` and its type-checking imports agree."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import dvt_engine

EAGER = {"DvtError", "EngineError", "ErrorCode", "PlanError", "RequestError", "RunError",
         "SignalError", "StepError", "StoreError", "__version__"}


def _type_checking_names() -> dict[str, str]:
    tree = ast.parse(Path(dvt_engine.__file__).read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    return {alias.name: str(node.module) for node in block.body
            if isinstance(node, ast.ImportFrom) for alias in node.names}


def test_all_is_the_lazy_names_and_the_eager_ones() -> None:
    assert sorted(dvt_engine.__all__) == sorted({*dvt_engine._LAZY, *EAGER})


def test_type_checking_imports_name_the_same_modules_as_the_lazy_map() -> None:
    assert _type_checking_names() == dvt_engine._LAZY


def test_every_exported_name_resolves_from_its_module() -> None:
    for name, module in dvt_engine._LAZY.items():
        assert getattr(dvt_engine, name) is getattr(importlib.import_module(module), name)
