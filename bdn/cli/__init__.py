"""The ``bdn`` command: argument parsing, one module per command group, over :mod:`bdn.api`."""
