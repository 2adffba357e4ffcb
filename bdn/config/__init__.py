"""What a user asks for, parsed and checked once at an entry point.

- :mod:`~bdn.config.weights`: Truss ``weights:`` entries and config files.
- :mod:`~bdn.config.uri`: source URIs (``hf://``, ``s3://``, ``gs://``, ``r2://``, paths).
- :mod:`~bdn.config.auth`: ``auth:`` blocks; :mod:`~bdn.config.secrets`: named secrets.
- :mod:`~bdn.config.patterns`: Truss allow/ignore patterns.
- :mod:`~bdn.config.settings`: the ``BDN_*`` environment; :mod:`~bdn.config.units`: sizes.
"""
