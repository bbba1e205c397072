"""Content-addressed artifact stores over fsspec: a local directory and S3 (extra ``artifacts``).

A driven adapter of the core's ``ArtifactStore`` port (:mod:`dvt_engine.artifacts`), found by
URL scheme through the ``dvt.artifact_stores`` entry points: ``file://`` gives
:class:`dvt_artifacts.local.LocalArtifactStore`, ``s3://``
:class:`dvt_artifacts.s3.S3ArtifactStore` (with ``s3fs``). Open one with
``dvt_engine.plugins.open_artifact_store(url | ArtifactStoreSettings)``. Importing this package
imports neither backend, so it stays cheap. See docs/artifacts.md.
"""
