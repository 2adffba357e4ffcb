"""The bucket-backed stores' shared part (``s3://``, ``gs://``)."""

from __future__ import annotations

from pathlib import Path

from bdn.backends.bucket import BucketClient
from bdn.backends.keys import check_key
from bdn.errors import NotFound


class BucketStore(BucketClient):
    """Base of the bucket-backed :class:`~bdn.backends.base.BlobStore` implementations:
    adds key mapping and ``exists`` (a ``size`` that may be ``NotFound``)."""

    read_only = False

    async def size(self, key: str) -> int:
        raise NotImplementedError

    async def exists(self, key: str) -> bool:
        """True when ``key`` exists; 401/403 raise ``AuthError``."""
        try:
            await self.size(key)
        except NotFound:
            return False
        return True

    def local_path(self, key: str) -> Path | None:
        return None

    def staging_dir(self) -> Path | None:
        return None

    def _full(self, key: str) -> str:
        check_key(key, store=self.uri)
        return self._base + key
