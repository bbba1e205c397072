"""The pytest11 entry point: offers dvt's fixtures when pytest-asyncio is there to run them.

pytest loads every installed plugin, also in a host that installed dvt without the ``testing``
extra; without pytest-asyncio this module then offers nothing rather than breaking that run.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("pytest_asyncio") is not None:
    from dvt_testing.fixtures import *  # noqa: F403  (pytest finds fixtures by module attribute)
    from dvt_testing.fixtures import (  # noqa: F401  (hooks, found the same way)
        pytest_addoption,
        pytest_configure,
    )
