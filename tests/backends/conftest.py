"""Fixtures shared by the backend tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bdn.http import HttpClient


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    """A shared HTTP client for a source's data plane, closed after the test."""
    client = HttpClient()
    yield client
    await client.close()
