"""Tests of ``bdn.simulate``: the flow network, the policies and whole bursts."""
