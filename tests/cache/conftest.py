"""The fixture the node-cache tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bdn.cache import NodeCache


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[NodeCache]:
    """An empty node cache with no byte budget, closed after the test (a test module
    that needs a budget defines its own ``cache``)."""
    c = NodeCache(tmp_path / "cache")
    yield c
    c.close()
