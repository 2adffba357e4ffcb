"""Scaffolding the two daemons share (the node agent and the mirror service):
lifecycle and signals, JSON logging, bearer tokens, listen addresses."""
