"""Where a step may read a project or an application from: the host's allowed roots.

A plan names paths (``project``, ``application``); the host decides which folders they may be
in, so a plan cannot point a tool at ``/etc`` or at another tenant's checkout. Paths are
resolved (symlinks followed) before they are compared, so ``examples/../../x`` or a link out of
a root is refused like the plain path.

    DVT_STEPS_ALLOWED_ROOTS='["/srv/dbt", "/srv/spark-apps"]'
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from dvt_engine.errors import StepParamsInvalid, StepPathNotAllowed
from dvt_engine.settings import _Settings

__all__ = ["DEFAULT_ROOTS", "ToolRootsSettings", "allowed_path"]

#: Without configuration only the current directory's ``examples/`` folder is allowed.
DEFAULT_ROOTS: tuple[str, ...] = ("examples",)


class ToolRootsSettings(_Settings):
    """The folders step kinds may read projects and applications from (``DVT_STEPS_ALLOWED_ROOTS``).

    Relative roots are taken from the current directory when a step runs.
    """

    model_config = SettingsConfigDict(env_prefix="DVT_STEPS_")

    allowed_roots: tuple[str, ...] = Field(default=DEFAULT_ROOTS)

    def resolved_roots(self) -> tuple[Path, ...]:
        """The roots as absolute, symlink-free paths (a missing root still counts)."""
        return tuple(Path(os.path.abspath(root)).resolve() for root in self.allowed_roots)


def allowed_path(value: object, *, param: str, roots: ToolRootsSettings,
                 kind: str = "any") -> Path:
    """``value`` as an existing path inside an allowed root; STEP_PATH_NOT_ALLOWED otherwise.

    ``kind`` is ``dir``, ``file`` or ``any``: what must be at the path.
    """
    if not isinstance(value, str) or not value or "\x00" in value:
        raise StepParamsInvalid(f"params.{param} must be a non-empty path",
                                details={"param": param}, retryable=False)
    path = Path(os.path.abspath(value)).resolve()
    inside = [root for root in roots.resolved_roots() if path.is_relative_to(root)]
    if not inside:
        raise StepPathNotAllowed(
            f"params.{param} is outside the allowed roots",
            details={"param": param, "path": value,
                     "allowedRoots": [str(r) for r in roots.resolved_roots()]})
    exists = {"dir": path.is_dir, "file": path.is_file, "any": path.exists}[kind]()
    if not exists:
        what = {"dir": "a folder", "file": "a file", "any": "there"}[kind]
        raise StepParamsInvalid(f"params.{param} is not {what}: {value}",
                                details={"param": param, "path": value}, retryable=False)
    return path
