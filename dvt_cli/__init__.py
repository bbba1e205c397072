"""The `dvt` command line: run, inspect and steer plans on any installed engine and store."""
