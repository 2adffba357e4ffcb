"""The transfer engine and its readers (see :mod:`bdn.transfer.engine`)."""

from bdn.transfer.engine import (
    DEFAULT_TRANSFER_CONFIG,
    FileResult,
    FileTask,
    TransferConfig,
    TransferEngine,
    TransferStats,
)
from bdn.transfer.local import LocalFileReader
from bdn.transfer.reader import RangeReader

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
