import os
import sys

import pytest

from tests.clusters import ray_head, spark_standalone  # noqa: F401 - shared fixtures
from tests.server import ImageServer

# Never reach beyond this machine from a test (see ../shared/COMPONENTS.md); child processes inherit these.
for name, value in {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "SPARK_LOCAL_IP": "127.0.0.1",
    "PYSPARK_PYTHON": sys.executable,
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "AWS_EC2_METADATA_DISABLED": "true",
    # the local Spark sessions' JVMs compile with C1 only: a JVM that lives for seconds spends more CPU in C2
    # compiles than they give back (about 32 -> 19 CPU seconds for a session's start and a small job)
    "PYSPARK_SUBMIT_ARGS": "--driver-java-options=-XX:TieredStopAtLevel=1 pyspark-shell",
}.items():
    os.environ.setdefault(name, value)


@pytest.fixture(scope="session")
def server():
    with ImageServer() as running:
        yield running
