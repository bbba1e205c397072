"""Step kinds that drive real tools (dbt, Spark, ...), each installed through its own extra.

Every kind is a ``dvt.step_handlers`` entry point. Importing a kind's module never imports its
tool, so a registry loads even where the tool is not installed; the step then fails with
STEP_TOOL_MISSING and names the extra to install.
"""
