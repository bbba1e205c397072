"""``python -m dvt_cli`` is the same as the ``dvt`` command."""

from dvt_cli.main import main

main()
