"""Fixtures of the Azure backend tests: Azurite, and a fresh container per test."""

from __future__ import annotations

import itertools
import os

import pytest

from tests.backends.azure.azurite import Azurite
from tests.backends.azure.azurite import azurite as azurite

_containers = itertools.count()


@pytest.fixture
def container(azurite: Azurite) -> str:
    """A fresh, empty container on the session's Azurite."""
    return azurite.make_container(f"bdn-{next(_containers)}-{os.getpid()}")
