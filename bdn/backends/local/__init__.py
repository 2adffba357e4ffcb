"""Local directories: the ``file://`` store, local sources, and positioned file reads."""
