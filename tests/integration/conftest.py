from collections.abc import Iterator

import pytest

from tests.integration.kafka_helpers import STARTED


@pytest.fixture(autouse=True)
def _no_stray_detectors() -> Iterator[None]:
    """A failed assertion must not leave a detector running after its test."""
    yield
    while STARTED:
        STARTED.pop().kill()
