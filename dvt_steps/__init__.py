"""Standard step kinds: ``sql``, ``http`` and ``shell``, one module each.

They reach dvt through ``dvt.step_handlers`` entry points, so ``default_registry()`` holds them
in every installation; each imports its driver only when a step runs, and a worker without the
kind's extra (``steps-sql``, ``steps-http``; ``steps-shell`` needs none) fails such a step with
STEP_DEPENDENCY_MISSING instead of breaking every registry. Every kind is inert until the host
configures it: ``sql`` needs a named connection, ``http`` an allowlisted origin, ``shell`` an
allowlisted command (docs/steps.md).
"""

from dvt_steps.settings import HttpStepSettings, ShellStepSettings, SqlStepSettings

__all__ = ["HttpStepSettings", "ShellStepSettings", "SqlStepSettings"]
