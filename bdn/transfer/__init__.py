"""The transfer engine and its readers (see :mod:`bdn.transfer.engine`)."""

from bdn.backends.base import RangeReader
from bdn.backends.local.reader import LocalFileReader
from bdn.transfer.engine import (
    DEFAULT_TRANSFER_CONFIG,
    FileResult,
    FileTask,
    TransferConfig,
    TransferEngine,
    TransferStats,
)

__all__ = [
    "DEFAULT_TRANSFER_CONFIG",
    "FileResult",
    "FileTask",
    "LocalFileReader",
    "RangeReader",
    "TransferConfig",
    "TransferEngine",
    "TransferStats",
]
