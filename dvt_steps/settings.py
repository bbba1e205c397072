"""Host settings of the standard step kinds, read from the worker's environment.

Each kind has its own prefix (``DVT_STEPS_SQL_``, ``DVT_STEPS_HTTP_``, ``DVT_STEPS_SHELL_``);
lists are JSON (``DVT_STEPS_HTTP_ALLOWED_HOSTS='["api.example.com"]'``). The defaults allow
nothing: no SQL file roots, no HTTP origins, no shell commands.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dvt_engine.settings import _Settings

MIB = 1024 * 1024


class SqlStepSettings(_Settings):
    """Where ``sql`` steps may read statement files, and how large a result stays inline."""

    model_config = SettingsConfigDict(env_prefix="DVT_STEPS_SQL_")

    file_roots: tuple[str, ...] = ()
    max_file_bytes: int = Field(default=1 * MIB, gt=0)
    max_inline_rows: int = Field(default=100, ge=0, le=10_000)
    max_inline_bytes: int = Field(default=16 * 1024, ge=0, le=30 * 1024)


class HttpStepSettings(_Settings):
    """Which origins ``http`` steps may call (the plan URI allowlist's form) and size limits."""

    model_config = SettingsConfigDict(env_prefix="DVT_STEPS_HTTP_")

    allowed_hosts: tuple[str, ...] = ()
    #: A PEM file of CAs to trust instead of the system's (an internal CA).
    ca_file: str | None = None
    max_response_bytes: int = Field(default=64 * MIB, gt=0)
    max_inline_bytes: int = Field(default=16 * 1024, ge=0, le=30 * 1024)
    default_timeout_s: float = Field(default=30.0, gt=0)


class ShellStepSettings(_Settings):
    """Which commands ``shell`` steps may run and which host variables they inherit."""

    model_config = SettingsConfigDict(env_prefix="DVT_STEPS_SHELL_")

    commands: tuple[str, ...] = ()
    env_allow: tuple[str, ...] = ()
    stop_grace_s: float = Field(default=5.0, ge=0)
    max_output_bytes: int = Field(default=64 * MIB, gt=0)
