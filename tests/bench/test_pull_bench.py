"""``bdn bench pull``: options, CLI wiring, environment handling and a tiny smoke run.

Nothing here asserts a speed: the smoke run only checks that every row of
every section got a figure (or failed loudly) and that the work directory and
the caller's environment are left as they were.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from bdn.errors import ConfigError
from bench.harness import MiB
from bench.model import remove_tree
from bench.pull import PullBenchOptions, options_from_args, run_pull_bench
from bench.pull_warm import bdn_environ
from tests.bench.support import need, parse_bench, quiet_console


def _parse(*argv: str) -> argparse.Namespace:
    return parse_bench("pull", *argv)


# -- options ---------------------------------------------------------------------


def test_defaults_are_the_issue_workload() -> None:
    options = PullBenchOptions()
    options.check()
    assert (options.shards, options.shard_size, options.repeat) == (8, 256 * MiB, 2)
    assert options.nbytes == 2 << 30
    assert options.fast_runs == 5


def test_fast_rows_run_at_least_repeat_times() -> None:
    assert PullBenchOptions(repeat=9).fast_runs == 9
    assert PullBenchOptions(repeat=1, fast_repeat=3).fast_runs == 3


@pytest.mark.parametrize(
    ("field", "flag"),
    [
        ("shards", "--shards"),
        ("shard_size", "--shard-size"),
        ("repeat", "--repeat"),
        ("ceiling_threads", "--ceiling-threads"),
        ("fast_repeat", "--fast-repeat"),
    ],
)
def test_check_rejects_values_below_one(field: str, flag: str) -> None:
    options = PullBenchOptions(**{field: 0})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=flag):
        options.check()


# -- CLI wiring --------------------------------------------------------------------


def test_register_adds_bench_pull_with_the_common_flags() -> None:
    args = _parse()
    assert callable(args.func)
    assert (args.shards, args.shard_size, args.repeat) == (8, "256MiB", 2)
    assert not (args.keep or args.json or args.no_install) and args.workdir is None
    args = _parse(
        *("--shards", "3", "--shard-size", "4MiB", "--repeat", "4"),
        *("--json", "--keep", "--no-install", "--workdir", "/x"),
    )
    options = options_from_args(args)
    assert (options.shards, options.shard_size, options.repeat) == (3, 4 * MiB, 4)
    assert options.keep and options.workdir == Path("/x") and args.json and args.no_install


def test_bad_size_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--shard-size"):
        options_from_args(_parse("--shard-size", "lots"))


# -- helpers ------------------------------------------------------------------------


def test_bdn_environ_sets_clears_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BDN_STORE", "file:///theirs")
    monkeypatch.setenv("BDN_AGENT", "unix:///agent.sock")
    monkeypatch.delenv("BDN_CACHE_DIR", raising=False)
    monkeypatch.delenv("BDN_CACHE_MAX_BYTES", raising=False)
    with bdn_environ("file:///bench/store", Path("/bench/cache")):
        assert os.environ["BDN_STORE"] == "file:///bench/store"
        assert os.environ["BDN_CACHE_DIR"] == "/bench/cache"
        assert "BDN_AGENT" not in os.environ
    assert os.environ["BDN_STORE"] == "file:///theirs"
    assert os.environ["BDN_AGENT"] == "unix:///agent.sock"
    assert "BDN_CACHE_DIR" not in os.environ


def test_remove_tree_deletes_read_only_trees(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"x")
    (tree / "sub" / "f").chmod(0o444)
    for directory in (tree / "sub", tree):
        directory.chmod(0o555)  # as a materialized tree is
    remove_tree(tree)
    assert not tree.exists()
    remove_tree(tree)  # already gone: nothing to do


# -- smoke run ------------------------------------------------------------------------


def test_pull_bench_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need("nginx", "curl")
    monkeypatch.setenv("BDN_STORE", "file:///somewhere/else")
    options = PullBenchOptions(
        shards=2, shard_size=4 * MiB, repeat=1, fast_repeat=2, workdir=tmp_path, ceiling_threads=2
    )
    report = run_pull_bench(options, console=quiet_console())
    assert [s.bdn_key for s in report.sections] == ["bdn", "new", "same", "api"]
    for section in report.sections:
        for r in section.results:
            assert not r.failed, f"{section.title} · {r.key}: {r.error}"
            runs = 1 if section.bdn_key == "bdn" else 2
            # Every row has its figures, or (a reference tool only) the reason it has none.
            assert len(r.seconds) == runs or (r.role == "reference" and r.error), r.key
        assert section.get(section.bdn_key).best is not None
    cold = report.sections[0]
    scaling = {r.key for r in cold.results if r.role == "scaling"}
    assert {r.key for r in cold.results} - scaling == {
        "bdn", "curl", "curl_par", "aria2c", "ceiling", "ceiling_fsync"}
    assert scaling and scaling <= {"bdn_w1", "bdn_w2"}
    for key in ("bdn", "curl_par", *scaling):  # CPU per GB of the whole process tree.
        assert (cold.get(key).cpu_per_gb or 0) > 0, key
    assert "the write ceiling" in cold.get("bdn").note
    assert "from cache 0 B" in cold.get("bdn").note
    assert "materialized by hardlink" in report.sections[1].get("new").note
    assert "materialized: unchanged" in report.sections[2].get("same").note
    assert any("aim < 50 ms" in n for n in report.notes)
    assert any("device machine" in n for n in report.notes)
    assert os.environ["BDN_STORE"] == "file:///somewhere/else"
    assert list(tmp_path.iterdir()) == []  # the work directory was removed
    json.dumps(report.to_dict())
