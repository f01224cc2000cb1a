import os

import pytest

from tests.server import ImageServer

# Never reach beyond this machine from a test (see ../shared/COMPONENTS.md).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def server():
    with ImageServer() as running:
        yield running
