"""The BDN node agent: thin wiring of the ``bdn`` library into a daemon.

- :mod:`agent.config` - :class:`~agent.config.AgentConfig`, composed from bdn's configs.
- :mod:`agent.server` - the pod-facing (unix socket) and peer-facing (TCP) HTTP apps.
- :mod:`agent.pulls` - pull requests: validation, coalescing, progress.
- :mod:`agent.peers` - ring membership: static or DNS peers, health probes.
- :mod:`agent.metrics` - Prometheus collectors in a dedicated registry.
- :mod:`agent.main` - start, drain on SIGTERM/SIGINT, stop.

Run it with ``bdn agent`` (see ``bdn agent --help``).
"""
