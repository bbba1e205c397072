"""Artifacts in an S3 bucket, or any S3-protocol server (``s3://bucket/prefix``), over s3fs.

S3 has no rename and no link, so publishing relies on conditional writes
(``If-None-Match: *``, which AWS S3 and S3Proxy honour on PutObject and
CompleteMultipartUpload): a write under an existing key fails with 412 and changes nothing.

- Bytes whose hash is known (``put(b"...")``) are written straight under their final key with
  one conditional PutObject (an S3 PUT is atomic: no reader sees half an object); above
  ``SINGLE_PUT_MAX`` the same goes through a conditional multipart upload.
- A stream is uploaded to ``<prefix>/tmp/<random>`` (multipart, one part buffered at a time)
  while it is hashed, then copied server-side into the final key by a multipart upload whose
  parts are UploadPartCopy ranges of the temporary object, completed conditionally. CopyObject
  itself ignores ``If-None-Match``, which is why it is not used. The temporary object is deleted
  afterwards either way.

A conditional write that fails because the key exists is success when the object there has the
expected size (another writer stored the same bytes first); anything else is
ARTIFACT_STORE_UNAVAILABLE. Credentials come from the options (resolved from secret
references by ``open_artifact_store``) or the standard AWS chain; they are handed to botocore
only and never appear in URIs, errors or logs.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

import s3fs
from botocore.exceptions import BotoCoreError, ClientError

from dvt_artifacts.base import CHUNK_BYTES, FsspecArtifactStore
from dvt_engine.errors import DvtError, UsageError

#: Upload part size of streams (S3's minimum part is 5 MiB); one part is buffered at a time.
PART_BYTES = 5 * 1024 * 1024
#: Largest object written with one PutObject; larger known bytes go multipart.
SINGLE_PUT_MAX = 64 * 1024 * 1024
#: Part size of the server-side copy from the temporary object (S3's maximum is 5 GiB).
COPY_PART_BYTES = 1024 * 1024 * 1024


def bucket_and_prefix(url: str) -> tuple[str, str]:
    """``("bucket", "prefix")`` of ``s3://bucket/prefix``; credentials in the URL are refused."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.hostname:
        raise UsageError(f"an S3 artifact store URL is s3://bucket/prefix, not {url!r}")
    if parts.username or parts.password:
        raise UsageError("an S3 artifact store URL holds credentials; give them as secret"
                         " references (DVT_ARTIFACTS_ACCESS_KEY_ID_REF, ...)")
    return parts.netloc, parts.path.strip("/")


class S3ArtifactStore(FsspecArtifactStore):
    """Content-addressed artifacts under ``s3://bucket/prefix``."""

    backend_errors = (OSError, BotoCoreError, ClientError)

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        **fs_options: Any,
    ) -> None:
        self.bucket, self.prefix = bucket_and_prefix(url)
        client_kwargs: dict[str, Any] = {}
        if region:
            client_kwargs["region_name"] = region
        fs = s3fs.S3FileSystem(
            key=access_key_id, secret=secret_access_key, endpoint_url=endpoint_url,
            client_kwargs=client_kwargs, default_block_size=PART_BYTES, fixed_upload_size=True,
            # A fresh instance: fsspec would otherwise hand back a cached one made with other
            # credentials, and an object's existence must never come from a listing cache.
            skip_instance_cache=True, use_listings_cache=False, **fs_options)
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        super().__init__(fs, root)
        self.endpoint_url = endpoint_url

    def uri_for(self, digest: str) -> str:
        """``s3://bucket/prefix/sha256/<aa>/<digest>`` (the root for an empty digest)."""
        return f"s3://{self.path_for(digest)}" if digest else f"s3://{self.root}"

    # --- writes ---------------------------------------------------------------------------
    def _store_small(self, body: bytes, digest: str) -> None:
        # Up to one chunk, the conditional PUT is the existence check (one request instead
        # of a HEAD and a PUT); larger bytes are checked first so they are not sent twice.
        if len(body) > CHUNK_BYTES and self._present(digest, len(body)):
            return
        self._put_small(body, self.path_for(digest))

    def _put_small(self, body: bytes, path: str) -> None:
        try:
            if len(body) <= SINGLE_PUT_MAX:
                self.fs.pipe_file(path, body, mode="create")
            else:
                self.fs.pipe_file(path, body, mode="create", chunksize=PART_BYTES)
        except (OSError, ClientError):
            if not self._present(path.rsplit("/", 1)[-1], len(body)):
                raise

    def _size(self, path: str) -> int | None:
        # HEAD only: fs.info would also list the key as a prefix when it is missing.
        _, key, _ = self.fs.split_path(path)
        try:
            head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return None
        return int(head["ContentLength"])

    def _discard(self, file: Any, path: str) -> None:
        # discard() aborts the multipart upload where close() would commit it; marking the
        # file closed keeps its finaliser from trying to commit the discarded buffer.
        with contextlib.suppress(Exception):  # the original error is the one to report
            if not file.closed:
                file.discard()
                file.closed = True
        self._remove(path)

    def _publish(self, tmp_path: str, path: str, size: int) -> None:
        try:
            self._copy_if_absent(tmp_path, path, size)
        except (OSError, ClientError):
            if not self._present(path.rsplit("/", 1)[-1], size):
                raise
        finally:
            self._remove(tmp_path)

    def _copy_if_absent(self, source: str, target: str, size: int) -> None:
        """Server-side copy ``source`` to ``target`` unless ``target`` exists (412 then)."""
        _, src_key, _ = self.fs.split_path(source)
        _, key, _ = self.fs.split_path(target)
        upload = self.fs.call_s3("create_multipart_upload", Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, max(size, 1), COPY_PART_BYTES), start=1):
                end = min(start + COPY_PART_BYTES, size) - 1
                options: dict[str, Any] = {}
                if size:
                    options["CopySourceRange"] = f"bytes={start}-{end}"
                out = self.fs.call_s3(
                    "upload_part_copy", Bucket=self.bucket, Key=key, PartNumber=number,
                    UploadId=upload_id, CopySource={"Bucket": self.bucket, "Key": src_key},
                    **options)
                parts.append({"PartNumber": number, "ETag": out["CopyPartResult"]["ETag"]})
            self.fs.call_s3("complete_multipart_upload", Bucket=self.bucket, Key=key,
                            UploadId=upload_id, MultipartUpload={"Parts": parts},
                            IfNoneMatch="*")
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one to report
                self.fs.call_s3("abort_multipart_upload", Bucket=self.bucket, Key=key,
                                UploadId=upload_id)
            raise
        self.fs.invalidate_cache(target)

    def _unavailable(self, exc: BaseException) -> DvtError:
        error = super()._unavailable(exc)
        if self.endpoint_url:
            error.details["endpointUrl"] = self.endpoint_url
        return error
