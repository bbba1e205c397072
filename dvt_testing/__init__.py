"""A pytest plugin for hosts of dvt: stores, engines and real local servers as fixtures.

Installed with ``pip install 'dvt[testing]'`` (and ``local`` for the servers); pytest loads it
through the ``pytest11`` entry point ``dvt``. See docs/testing.md.
"""
