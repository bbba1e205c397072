"""Shared test configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_spec_dir() -> Path:
    """Where the contract and its vectors live: ../shared/spec beside the repository."""
    return REPO_ROOT.parent / "shared" / "spec"


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    """The shared spec directory; the contract tests cannot run without it."""
    path = shared_spec_dir()
    if not (path / "idempotency_vectors.json").is_file():
        raise RuntimeError(f"contract vectors not found at {path}")
    return path
