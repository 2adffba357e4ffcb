"""``bdn simulate`` through real ``python -m bdn`` processes: JSON, table, PNG, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli import assert_one_line_error
from tests.fixtures import bdn_env, run_bdn

BURST = ("simulate", "--nodes", "20", "--model-size", "1GB")


def test_json_has_the_keys_scripts_rely_on(tmp_path: Path) -> None:
    res = run_bdn(*BURST, "--policy", "fanout", "--json", home=tmp_path)
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    for key in ("p50_s", "p99_s", "max_s", "origin_bytes", "peak_egress_bytes_per_node"):
        assert isinstance(out[key], int | float), key
    assert out["policy"] == "fanout" and out["nodes"] == 20
    assert out["origin_bytes"] == 10**9
    assert out["nic_bytes_per_s"] == 25e9 / 8  # The stated defaults.
    assert out["disk_bytes_per_s"] == 3e9 and out["origin_bytes_per_s"] == 10e9


def test_the_same_seed_prints_the_same_json(tmp_path: Path) -> None:
    runs = [run_bdn(*BURST, "--policy", "ring", "--seed", "3", "--json", home=tmp_path)
            for _ in range(2)]
    assert runs[0].code == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout


def test_one_node_takes_size_over_the_link_given(tmp_path: Path) -> None:
    res = run_bdn("simulate", "--nodes", "1", "--model-size", "2GB", "--policy", "naive",
                  "--nic", "8Gbit/s", "--origin-per-node", "500MB/s", "--json", home=tmp_path)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["max_s"] == pytest.approx(4.0, rel=1e-3)


def test_the_table_names_every_figure(tmp_path: Path) -> None:
    res = run_bdn(*BURST, "--policy", "ring", "--replicas", "2", "--cpu-per-gb", "0.5",
                  home=tmp_path)
    assert res.code == 0, res.stderr
    for needle in ("time-to-ready p50", "time-to-ready p99", "time-to-ready max",
                   "origin bytes", "peak egress per node"):
        assert needle in res.stdout


def test_plot_writes_a_png_of_the_three_policies(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    png = out_dir / "ttr.png"
    res = run_bdn("simulate", "--model-size", "512MB", "--plot", str(png), "--nodes-list",
                  "2,8,16", "--json", home=tmp_path)
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["plot"] == str(png)
    assert sorted({(r["policy"], r["nodes"]) for r in out["results"]}) == sorted(
        (p, n) for p in ("naive", "ring", "fanout") for n in (2, 8, 16))
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"IEND" in data[-16:]
    assert [p.name for p in out_dir.iterdir()] == ["ttr.png"]  # No temp file left.


def test_plot_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    # A real process in which `import matplotlib` fails, as on a plain install.
    code = ("import sys; sys.modules['matplotlib'] = None; from bdn.cli.main import main; "
            "sys.exit(main(sys.argv[1:]))")
    png = tmp_path / "p.png"
    proc = subprocess.run(
        [sys.executable, "-c", code, "simulate", "--model-size", "64MB", "--plot", str(png),
         "--nodes-list", "2"],
        capture_output=True, text=True, env=bdn_env(tmp_path), timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "bdn: error: --plot: plotting needs matplotlib; " \
        "pip install matplotlib"
    assert not png.exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--nodes", "ten", "--model-size", "1GB", "--policy", "ring"),
         ("--nodes: 'ten' is not a whole number",)),
        (("--nodes", "0", "--model-size", "1GB", "--policy", "ring"), ("--nodes:",)),
        (("--nodes", "4", "--model-size", "huge", "--policy", "ring"), ("--model-size:",)),
        (("--nodes", "4", "--model-size", "1GB", "--policy", "tree"),
         ("--policy: 'tree' is not a policy", "naive, ring, fanout")),
        (("--nodes", "4", "--model-size", "1GB", "--policy", "ring", "--nic", "fast"),
         ("--nic: 'fast' is not a rate", "25Gbit/s")),
        (("--nodes", "4", "--model-size", "1GB", "--policy", "ring", "--chunk-size", "1KiB"),
         ("--chunk-size:",)),
        (("--nodes", "4", "--model-size", "1GB", "--policy", "fanout", "--fanout", "0"),
         ("--fanout:",)),
        (("--nodes", "4", "--model-size", "1GB", "--policy", "ring", "--cpu-per-gb", "-2"),
         ("--cpu-per-gb:",)),
        (("--nodes", "4", "--model-size", "1GB", "--policy", "ring", "--chunk-order", "x"),
         ("--chunk-order: 'x' is not a chunk order", "hashed, in-order, rotated")),
        (("--model-size", "1GB", "--policy", "ring"), ("--nodes: is required",)),
        (("--nodes", "4", "--policy", "ring"), ("--model-size: is required",)),
        (("--nodes", "4", "--model-size", "1GB"), ("--policy: is required",)),
        (("--nodes", "4", "--model-size", "1GB", "--policy", "ring", "--nodes-list", "2,4"),
         ("--nodes-list: only with --plot",)),
        (("--model-size", "1GB", "--plot", "out.svg"), ("--plot:", ".png")),
        (("--model-size", "1GB", "--plot", "x.png", "--nodes-list", "2,a"),
         ("--nodes-list: 'a'",)),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(
    tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    assert_one_line_error(run_bdn("simulate", *args, home=tmp_path), *needles)


def test_plot_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    res = run_bdn("simulate", "--model-size", "64MB", "--plot",
                  str(tmp_path / "no" / "such" / "p.png"), "--nodes-list", "2", home=tmp_path)
    assert_one_line_error(res, "--plot: cannot write", "pick a writable folder")
