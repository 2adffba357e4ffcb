"""What the storage emulators the tests run on loopback have in common.

:class:`tests.gcsemulator.GcsEmulator` (gcp-storage-emulator) and
:class:`tests.backends.azure.azurite.Azurite` each serve one cloud's storage API
at ``endpoint``; tests fill them through that cloud's own SDK.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

__all__ = ["StorageEmulator"]


@dataclass(frozen=True)
class StorageEmulator(ABC):
    """A running emulator: ``endpoint`` is its base URL, ``http://127.0.0.1:<port>``."""

    endpoint: str

    @abstractmethod
    def client(self) -> Any:
        """The cloud SDK's storage client, on the emulator."""

    @abstractmethod
    def upload(self, container: str, name: str, data: bytes) -> Any:
        """Write ``data`` as object ``name`` of ``container`` (a bucket); returns what the
        SDK then knows of the object (its generation, MD5...)."""
