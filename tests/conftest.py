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
}.items():
    os.environ.setdefault(name, value)


@pytest.fixture(scope="session")
def server():
    with ImageServer() as running:
        yield running
