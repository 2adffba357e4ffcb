"""Measure ``bdn csi`` for the issue's note (run by hand, as root; not a test):

    python -m tests.csi.measure [--mib 256] [--cycles 100]

1. NodePublishVolume until it returns, for a cold model (empty node cache,
   the agent fetches it from a ``file://`` store) and warm (another volume of
   the same model, so a new tree of hardlinks), against ``bdn pull`` of the
   same model in the same run (in-process, cold cache, then warm).
2. Publish/unpublish cycles where the plugin is SIGKILLed at a random moment
   of a random half of the calls, restarted, and the call retried (as kubelet
   retries); then the mounts, hold records and trees left behind are counted.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bdn.csi import mounts
from tests.csi.plugin import (
    Kubelet,
    PluginProcess,
    node_agent,
    pod_target,
    start_plugin,
    unmount_all_under,
)
from tests.e2e.agents import mirrored_model, short_dir
from tests.fixtures import run_bdn


def _model(mib: int) -> dict[str, bytes]:
    """``mib`` MiB of incompressible shards, plus a config."""
    rng = random.Random(7)
    shard = 64 * 2**20
    files = {"config.json": b'{"model": "measure"}'}
    left, i = mib * 2**20, 0
    while left > 0:
        n = min(shard, left)
        files[f"model-{i:05d}.safetensors"] = rng.randbytes(n)
        left, i = left - n, i + 1
    return files


async def _timed_publish(kubelet: Kubelet, vol: str, target: Path, attrs: dict[str, str]) -> float:
    started = time.perf_counter()
    await kubelet.publish(vol, target, attrs)
    return time.perf_counter() - started


class Cycler:
    """Publish/unpublish cycles with random kills of the plugin."""

    def __init__(self, base: Path, agent: str, trees: Path, state: Path, pods: Path,
                 attrs: dict[str, str], plugin: PluginProcess, kubelet: Kubelet) -> None:
        self.base, self.agent, self.trees, self.state, self.pods = base, agent, trees, state, pods
        self.attrs, self.plugin, self.kubelet = attrs, plugin, kubelet
        self.kills = 0
        self.rng = random.Random(11)

    async def restart(self) -> None:
        self.plugin.kill()
        self.kills += 1
        await self.kubelet.close()
        self.plugin = start_plugin(self.base, agent=self.agent, trees_root=self.trees,
                                   state_dir=self.state)
        self.kubelet = Kubelet(self.plugin.socket)
        await self.kubelet.wait_ready(self.plugin)

    async def call(self, make: Any) -> None:
        """Run ``make(kubelet)``; half the time kill the plugin at a random moment
        first; retry (bounded) until the call succeeds, as kubelet would."""
        if self.rng.random() < 0.5:
            task = asyncio.ensure_future(make(self.kubelet))
            await asyncio.sleep(self.rng.uniform(0, 0.08))
            await self.restart()
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await task
        for _ in range(5):
            try:
                await make(self.kubelet)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                await self.kubelet.wait_ready(self.plugin)
        raise AssertionError("a call kept failing after 5 retries")

    async def run(self, n: int) -> dict[str, Any]:
        for i in range(n):
            target = pod_target(self.pods)
            vol = f"csi-cycle-{i}"
            await self.call(lambda k, v=vol, t=target: k.publish(v, t, self.attrs))
            assert mounts.mount_state(target) == "ro", target
            await self.call(lambda k, v=vol, t=target: k.unpublish(v, t))
        holds = list((self.state / "holds").glob("*.json"))
        trees = os.listdir(self.trees / "csi") if (self.trees / "csi").exists() else []
        return {"cycles": n, "plugin_kills": self.kills,
                "mounts_left": len(mounts.mount_points_under(self.pods)),
                "holds_left": len(holds), "trees_left": len(trees)}


async def measure(mib: int, cycles: int) -> dict[str, Any]:
    out: dict[str, Any] = {"model_mib": mib, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bdn-csi-measure-") as d, short_dir() as base:
        tmp = Path(d)
        _, store_root, manifest = await mirrored_model(tmp, _model(mib), 16 * 2**20)
        store = f"file://{store_root}"
        # bdn pull, in-process, cold then warm, on its own cache.
        for label in ("bdn_pull_cold_s", "bdn_pull_warm_s"):
            started = time.perf_counter()
            res = run_bdn("pull", manifest.id, "--to", str(tmp / f"pulled-{label}"), "--store",
                          store, "--cache", str(tmp / "pull-cache"), home=tmp, timeout=600)
            assert res.code == 0, res.stderr
            out[label] = round(time.perf_counter() - started, 3)
        trees, state, pods = tmp / "trees", tmp / "state", tmp / "pods"
        pods.mkdir()
        attrs = {"manifest_id": manifest.id}
        with unmount_all_under(tmp):
            async with node_agent(base, store, trees) as agent:
                plugin = start_plugin(base, agent=agent.agent_address, trees_root=trees,
                                      state_dir=state)
                kubelet = Kubelet(plugin.socket)
                await kubelet.wait_ready(plugin)
                out["publish_cold_s"] = round(await _timed_publish(
                    kubelet, "csi-cold", pod_target(pods), attrs), 3)
                warm = [await _timed_publish(kubelet, f"csi-warm-{i}", pod_target(pods), attrs)
                        for i in range(10)]
                out["publish_warm_median_ms"] = round(statistics.median(warm) * 1000, 1)
                out["publish_warm_max_ms"] = round(max(warm) * 1000, 1)
                for hold in list((state / "holds").glob("*.json")):
                    h = json.loads(hold.read_text())
                    await kubelet.unpublish(h["volume_id"], Path(h["target"]))
                cycler = Cycler(base, agent.agent_address, trees, state, pods, attrs, plugin,
                                kubelet)
                started = time.perf_counter()
                out.update(await cycler.run(cycles))
                out["cycles_s"] = round(time.perf_counter() - started, 1)
                await cycler.kubelet.close()
                cycler.plugin.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--cycles", type=int, default=100)
    args = p.parse_args()
    print(json.dumps(asyncio.run(measure(args.mib, args.cycles)), indent=2))


if __name__ == "__main__":
    main()
