"""Mirror a weights source into a content-addressed store (DESIGN.md, "Mirror")."""

from bdn.mirror.run import (
    DEFAULT_MIRROR_OPTIONS,
    MirrorOptions,
    MirrorPlan,
    MirrorResult,
    run_mirror,
)

__all__ = ["DEFAULT_MIRROR_OPTIONS", "MirrorOptions", "MirrorPlan", "MirrorResult", "run_mirror"]
