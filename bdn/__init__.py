"""BDN: model-weight delivery and caching.

Mirror weights once into content-addressed storage, then pull them onto GPU
nodes through node cache, peer cache and origin. A model calls
:func:`ensure_weights` (or :func:`prefetch_weights` in ``__init__`` and
``.wait()`` in ``load()``); see ``bdn.api``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bdn.errors import BdnError

__version__ = "0.1.0"

__all__ = [
    "BdnError",
    "WeightsHandle",
    "__version__",
    "ensure_weights",
    "ensure_weights_from_config",
    "prefetch_weights",
]

if TYPE_CHECKING:
    from bdn.api import WeightsHandle, ensure_weights, ensure_weights_from_config, prefetch_weights

_API = {"WeightsHandle", "ensure_weights", "ensure_weights_from_config", "prefetch_weights"}


def __getattr__(name: str) -> Any:
    # The API pulls in aiohttp and boto3; load it on first use so `import bdn`
    # (and the CLI's start-up) stays cheap.
    if name in _API:
        from bdn import api

        return getattr(api, name)
    raise AttributeError(f"module 'bdn' has no attribute {name!r}")
