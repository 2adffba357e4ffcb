"""The transfer engine (see :mod:`bdn.transfer.engine`) and the values it works with.

Readers are the backends' business: the engine takes any
:class:`~bdn.backends.base.RangeReader` and never imports a backend.
"""

from bdn.backends.base import RangeReader
from bdn.transfer.engine import TransferEngine
from bdn.transfer.task import (
    DEFAULT_TRANSFER_CONFIG,
    FileResult,
    FileTask,
    TransferConfig,
    TransferStats,
)

__all__ = [
    "DEFAULT_TRANSFER_CONFIG",
    "FileResult",
    "FileTask",
    "RangeReader",
    "TransferConfig",
    "TransferEngine",
    "TransferStats",
]
