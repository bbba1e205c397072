"""Artifacts in a local directory (``file:///srv/artifacts``; default ``$DVT_HOME/artifacts``).

Publishing is a hard link from the finished temporary file to the object's path: ``link``
fails when the path exists, so of many concurrent writers of the same bytes exactly one
creates the object and no one ever replaces it (a rename would silently overwrite). The
temporary file is fsynced and made read-only first, so a published object is complete on
disk and not writable by accident. The temporary directory sits under the root, on the same
filesystem, which is what a hard link needs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fsspec.implementations.local import LocalFileSystem

from dvt_artifacts.base import FsspecArtifactStore
from dvt_engine.errors import UsageError

READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def root_of(url: str) -> Path:
    """The directory a ``file://`` URL names (absolute; no host other than localhost)."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
        raise UsageError(f"a local artifact store URL is file:///absolute/path, not {url!r}",
                         details={"url": url})
    return Path(unquote(parts.path)).resolve()


class LocalArtifactStore(FsspecArtifactStore):
    """Content-addressed artifacts in a directory of the local filesystem."""

    def __init__(self, url: str, **options: Any) -> None:
        if options:
            raise UsageError(f"unknown local artifact store options: {', '.join(sorted(options))}",
                             details={"unknown": sorted(options)})
        self.directory = root_of(url)
        super().__init__(LocalFileSystem(), str(self.directory))

    def uri_for(self, digest: str) -> str:
        """``file:///<root>/sha256/<aa>/<digest>`` (the root itself for an empty digest)."""
        if not digest:
            return self.directory.as_uri()
        return Path(self.path_for(digest)).as_uri()

    def _open_write(self, path: str) -> Any:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "xb")  # closed by _close_write or _discard

    def _close_write(self, file: Any) -> None:
        file.flush()
        os.fsync(file.fileno())
        file.close()

    def _publish(self, tmp_path: str, path: str, size: int) -> None:
        os.chmod(tmp_path, READ_ONLY)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(tmp_path, path)
        except FileExistsError:
            # Another writer published the same bytes first; theirs stays.
            self._present(Path(path).name, size)
        finally:
            self._remove(tmp_path)
