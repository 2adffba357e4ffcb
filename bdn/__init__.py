"""BDN: model-weight delivery and caching.

Mirror weights once into content-addressed storage, then pull them onto GPU
nodes through node cache, peer cache and origin. See DESIGN.md.
"""

from bdn.errors import BdnError

__version__ = "0.1.0"

__all__ = ["BdnError", "__version__"]
