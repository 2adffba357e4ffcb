"""Tests of the node agent (agent/): its servers in-process, its process lifecycle."""
