"""Multi-process end-to-end tests: several real agents forming a ring on loopback."""
