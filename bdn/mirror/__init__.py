"""Mirror a weights source into a content-addressed store (docs/DESIGN.md, "Mirror").

This package's top level is the library (:mod:`bdn.mirror.run`: source ->
store + manifest); the daemon that runs mirrors as jobs submitted over HTTP
is :mod:`bdn.mirror.service`, which the library never imports.
"""

from bdn.mirror.run import (
    DEFAULT_MIRROR_OPTIONS,
    MirrorOptions,
    MirrorPlan,
    MirrorResult,
    run_mirror,
)

__all__ = ["DEFAULT_MIRROR_OPTIONS", "MirrorOptions", "MirrorPlan", "MirrorResult", "run_mirror"]
