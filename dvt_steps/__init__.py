"""Standard step kinds: ``sql``, ``http``, ``shell``, ``dbt`` and ``spark.submit``.

They reach dvt through ``dvt.step_handlers`` entry points, so ``default_registry()`` holds them
in every installation; each imports its driver only when a step runs, and a worker without the
kind's extra (``steps-sql``, ``steps-http``, ``steps-dbt``, ``steps-spark``; ``steps-shell``
needs none) fails such a step with STEP_DEPENDENCY_MISSING instead of breaking every registry.
Every kind is inert until the host configures it: ``sql`` and ``dbt`` need a named connection,
``http`` an allowlisted origin, ``shell`` an allowlisted command; ``dbt`` projects and
``spark.submit`` applications must lie inside the allowed roots (docs/steps.md).
"""

from dvt_steps.settings import HttpStepSettings, ShellStepSettings, SqlStepSettings
from dvt_steps.tool_roots import ToolRootsSettings

__all__ = ["HttpStepSettings", "ShellStepSettings", "SqlStepSettings", "ToolRootsSettings"]
