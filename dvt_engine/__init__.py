"""dvt: run data and ops pipelines durably on real workflow engines through one engine port."""

from dvt_engine.errors import DvtError, ErrorCode
from dvt_engine.plugins import open_engine, open_store

__version__ = "0.1.0"

__all__ = ["DvtError", "ErrorCode", "__version__", "open_engine", "open_store"]
