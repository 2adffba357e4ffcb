"""How many CPUs a mirror keeps busy: automatic from what the process may use
(``bdn.transfer.cores``), or set; the result is the same either way."""

from __future__ import annotations

from pathlib import Path

from bdn.backends import open_store
from bdn.config.secrets import SecretResolver
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry
from bdn.mirror import MirrorOptions, run_mirror
from bdn.transfer import TransferConfig
from bdn.transfer.cores import available_cpus
from tests.fixtures import make_model, pattern_bytes


def test_workers_default_from_cpus_and_can_be_set() -> None:
    assert MirrorOptions(workers=3).transfer_config().io_threads == 6
    assert MirrorOptions().transfer_config().io_threads == 2 * available_cpus()
    assert MirrorOptions().files_in_flight() == max(8, available_cpus())
    assert MirrorOptions(workers=12).files_in_flight() == 12
    assert MirrorOptions(workers=12).files_in_flight(spooled=True) == 8  # bounded temp space
    assert MirrorOptions(max_files_in_flight=2).files_in_flight() == 2


def test_bdn_workers_reaches_the_mirror() -> None:
    settings = Settings.from_env({"BDN_WORKERS": "1"})
    assert MirrorOptions.from_settings(settings).transfer_config().io_threads == 2
    assert MirrorOptions.from_settings(settings).transfer_config().workers == 1


def test_the_data_plane_gets_one_process_per_cpu_unless_the_caller_chose() -> None:
    assert MirrorOptions(workers=3).transfer_config().workers == 3
    assert MirrorOptions().transfer_config().workers == available_cpus()
    chosen = MirrorOptions(workers=6, transfer=TransferConfig(workers=1))
    assert chosen.transfer_config().workers == 1  # An explicit one sticks.
    assert chosen.transfer_config().io_threads == 12


async def test_one_worker_and_many_give_the_same_manifest(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src", {f"s{i}.bin": pattern_bytes(i, 300_000 + i)
                                        for i in range(6)})
    ids = []
    for workers in (1, 4):
        store = open_store(f"file://{tmp_path / f'store-{workers}'}")
        try:
            result = await run_mirror(WeightsEntry(source=f"file://{src}"), store=store,
                                      secrets=SecretResolver(None, {}),
                                      options=MirrorOptions(chunk_size=64 * 1024, workers=workers))
        finally:
            await store.close()
        assert result.bytes_stored == result.total_bytes
        ids.append(result.manifest_id)
    assert ids[0] == ids[1]
