"""``bdn bench``: formatting, data generation, nginx lifecycle and a tiny smoke run.

Nothing here asserts a speed: a bench measures, and the suite only checks that
it measures the right things and reports them whole.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bdn.digest import xxh3_128_hex
from bdn.errors import ConfigError
from bench import build_parser, main, register
from bench.harness import (
    BenchAbort,
    MiB,
    ToolFailed,
    generate_files,
    verify_file,
    write_ceiling,
)
from bench.herd import run_herd_bench
from bench.herd_report import HerdBenchOptions
from bench.mirror import MirrorBenchOptions, run_mirror_bench
from bench.mirror_server import MirrorServerBenchOptions, run_mirror_server_bench
from bench.nginx import Nginx, answers_http, nginx_config
from bench.pull import PullBenchOptions, run_pull_bench
from bench.report import (
    Aim,
    BenchReport,
    Report,
    Result,
    Section,
    aim_text,
    build_table,
    format_gbps,
    format_ratio,
    format_seconds,
    ratio,
)
from bench.tools import MachineFacts, ensure_tools, missing_tools
from bench.transfer import TransferBenchOptions, run_transfer_bench
from tests.bench.support import need, parse_bench, quiet_console

FACTS = MachineFacts(
    cores=2,
    ram_bytes=8 << 30,
    kernel="6.1",
    python="3.11.7",
    filesystem="ext4 (/dev/x)",
    tools={"curl": "8.0"},
)


def _rendered(section: Section) -> str:
    console = quiet_console()
    console.print(build_table(section))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def _section() -> Section:
    return Section(
        "(a) one file",
        "bdn",
        [
            Result("bdn", "bdn engine", "bdn", 2_000_000_000, seconds=[1.0, 2.0]),
            Result("curl", "curl", "reference", 2_000_000_000, seconds=[1.5, 1.6, 1.7]),
            Result("aria2c", "aria2c", "reference", 2_000_000_000, error="aria2c not on PATH"),
            Result("ceiling", "ceiling", "ceiling", 2_000_000_000, seconds=[0.5]),
        ],
        (Aim("aria2c", 3.0), Aim("curl", 1.3)),
    )


# -- formatting and ratios ---------------------------------------------------


def test_formatting_of_figures() -> None:
    assert format_ratio(2.3456) == "2.35x"
    assert format_ratio(None) == "—"
    assert format_gbps(1.234) == "1.23"
    assert format_seconds(0.12345) == "0.123"
    assert format_seconds(None) == "—"


def test_result_best_median_and_throughput() -> None:
    r = Result("x", "x", "reference", 3_000_000_000, seconds=[3.0, 1.0, 2.0])
    assert r.best == 1.0
    assert r.median == 2.0
    assert r.gbps == pytest.approx(3.0)
    missing = Result("y", "y", "reference", 10, seconds=[1.0], error="gone")
    assert missing.best is None and missing.gbps is None


def test_ratio_is_bdn_speed_over_reference_speed() -> None:
    section = _section()
    assert section.ratio_to("curl") == pytest.approx(1.5)
    assert section.ratio_to("ceiling") == pytest.approx(0.5)
    assert section.ratio_to("aria2c") is None
    assert ratio(section.get("bdn"), section.get("bdn")) == pytest.approx(1.0)


def test_aim_lines_state_aim_and_achieved() -> None:
    lines = _section().aim_lines()
    (aria, aria_got, aria_met), (curl, curl_got, curl_met) = lines
    assert (aria.reference, aria_got, aria_met) == ("aria2c", None, False)
    assert (curl.reference, curl_met) == ("curl", True)
    text = aim_text(curl, curl_got, curl_met, "(a)")
    assert "aim BDN >= 1.3x curl" in text and "achieved 1.50x" in text and "met" in text
    assert "no figure" in aim_text(aria, aria_got, aria_met, "(a)")


def test_table_shows_every_tool_and_unavailable_reason() -> None:
    out = _rendered(_section())
    for label in ("bdn engine", "curl", "aria2c", "ceiling"):
        assert label in out
    assert "not available (aria2c not on PATH)" in out
    assert "1.50x" in out and "0.50x" in out
    assert "2.00" in out  # BDN's best: 2 GB in 1 s.


def test_report_exit_code_and_json() -> None:
    report = BenchReport("transfer", FACTS, 2, [_section()])
    assert report.exit_code == 2  # a reference was not available
    report.sections[0].results[2] = Result("aria2c", "aria2c", "reference", 1, seconds=[1.0])
    assert report.exit_code == 0
    report.sections[0].results[1].error, report.sections[0].results[1].failed = "boom", True
    assert report.exit_code == 1
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["machine"]["cores"] == 2
    rows = {r["key"]: r for r in doc["sections"][0]["results"]}
    assert rows["ceiling"]["bdn_ratio"] == pytest.approx(0.5)
    assert {a["reference"] for a in doc["sections"][0]["aims"]} == {"aria2c", "curl"}


# -- data ----------------------------------------------------------------------


def test_generate_files_sizes_digests_and_incompressible(tmp_path: Path) -> None:
    chunk = 1 * MiB
    specs = [(tmp_path / "a", 3 * chunk + 5), (tmp_path / "b", 1), (tmp_path / "c", chunk)]
    files = generate_files(specs, chunk_size=chunk)
    for (path, size), f in zip(specs, files, strict=True):
        data = path.read_bytes()
        assert len(data) == size == f.size
        assert f.sha256 == hashlib.sha256(data).hexdigest()
        assert f.chunks == tuple(xxh3_128_hex(data[i : i + chunk]) for i in range(0, size, chunk))
        verify_file(path, f, sha256=True)
    a = (tmp_path / "a").read_bytes()
    assert len(zlib.compress(a[:chunk], 1)) > 0.99 * chunk
    assert files[0].chunks[0] != files[0].chunks[1]  # pieces are not one buffer repeated


def test_verify_file_catches_wrong_bytes_and_size(tmp_path: Path) -> None:
    (f,) = generate_files([(tmp_path / "x", 2 * MiB)], chunk_size=1 * MiB)
    with open(f.path, "r+b") as fh:
        fh.seek(MiB + 7)
        byte = fh.read(1)
        fh.seek(MiB + 7)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ToolFailed, match="chunk 1"):
        verify_file(f.path, f)
    with open(f.path, "r+b") as fh:
        fh.truncate(MiB)
    with pytest.raises(ToolFailed, match="bytes, expected"):
        verify_file(f.path, f)
    with pytest.raises(ToolFailed, match="not written"):
        verify_file(tmp_path / "absent", f)


def test_write_ceiling_writes_exact_sizes(tmp_path: Path) -> None:
    files = [(tmp_path / "one", 3 * MiB + 1), (tmp_path / "two", 10)]
    seconds = write_ceiling(files, threads=3, block=1 * MiB)
    assert seconds > 0
    assert [p.stat().st_size for p, _ in files] == [3 * MiB + 1, 10]


# -- tools -----------------------------------------------------------------------


def test_missing_tool_names_install_command_and_never_installs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH, apt-get included
    reasons = missing_tools(["curl", "aria2c"])
    assert "apt-get install -y --no-install-recommends aria2" in reasons["aria2c"]
    with pytest.raises(BenchAbort) as info:
        ensure_tools(["nginx", "aria2c"], allow_install=False, console=quiet_console())
    assert info.value.exit_code == 2
    assert "apt-get install -y --no-install-recommends nginx aria2" in str(info.value)
    assert "\n" not in str(info.value)


# -- nginx -----------------------------------------------------------------------


def test_nginx_config_keeps_everything_in_the_workdir(tmp_path: Path) -> None:
    state, root = tmp_path / "state", tmp_path / "data"
    conf = nginx_config(port=18080, root=root, state_dir=state, as_root=False)
    for line in (
        "daemon off;",
        "worker_processes auto;",
        "sendfile on;",
        "access_log off;",
        f"pid {state / 'nginx.pid'};",
        f"error_log {state / 'error.log'}",
        "listen 127.0.0.1:18080;",
        f"root {root};",
    ):
        assert line in conf
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{temp}_temp_path {state / temp};" in conf
    assert "user " not in conf
    assert "user root;" in nginx_config(port=1, root=root, state_dir=state, as_root=True)
    assert conf.count("{") == conf.count("}")



def test_nginx_serves_and_is_stopped_even_on_error(tmp_path: Path) -> None:
    need("nginx")
    root = tmp_path / "data"
    root.mkdir()
    (root / "hello").write_bytes(b"hi there")
    with pytest.raises(RuntimeError), Nginx(root, tmp_path / "state") as nginx:
        port = nginx.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/hello", headers={"Range": "bytes=3-7"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (206, b"there")
        conn.close()
        raise RuntimeError("bench blew up")
    assert not answers_http(port)


# -- CLI wiring and smoke runs ----------------------------------------------------


@pytest.mark.parametrize(
    ("run", "options"),
    [
        (run_transfer_bench, TransferBenchOptions),
        (run_mirror_bench, MirrorBenchOptions),
        (run_pull_bench, PullBenchOptions),
        (run_herd_bench, HerdBenchOptions),
        (run_mirror_server_bench, MirrorServerBenchOptions),
    ],
    ids=["transfer", "mirror", "pull", "herd", "mirror-server"],
)
def test_bad_options_fail_before_any_work(
    tmp_path: Path, run: Callable[..., Report], options: Callable[..., Any]
) -> None:
    with pytest.raises(ConfigError, match="--repeat"):
        run(options(repeat=0, workdir=tmp_path), console=quiet_console())
    assert list(tmp_path.iterdir()) == []


def test_register_adds_bench_transfer_and_mirror() -> None:
    parser = argparse.ArgumentParser(prog="bdn")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "transfer", "--size", "8MiB", "--repeat", "1"])
    assert (args.size, args.repeat, args.shards, args.shard_size) == ("8MiB", 1, 8, "256MiB")
    assert callable(args.func) and not args.keep and not args.json
    args = parser.parse_args(["bench", "mirror", "--shards", "2", "--json"])
    assert callable(args.func) and args.json and args.shards == 2


def test_main_parses_bdn_bench_on_its_own_with_the_same_flags() -> None:
    parser = build_parser()
    assert parser.prog == "bdn bench"
    for argv in (["transfer", "--size", "8MiB", "--repeat", "1"], ["mirror", "--shards", "2"],
                 ["pull", "--json"], ["herd", "--nodes", "2,4", "--netns"],
                 ["mirror-server", "--jobs", "3"]):
        via_main = vars(parse_bench(*argv))
        outer = argparse.ArgumentParser(prog="bdn")
        register(outer.add_subparsers(dest="command"))
        via_register = vars(outer.parse_args(["bench", *argv]))
        assert via_register.pop("command") == "bench"
        assert via_main == via_register
    with pytest.raises(SystemExit) as exit_:
        main(["no-such-bench"])
    assert exit_.value.code == 2


def test_transfer_bench_smoke(tmp_path: Path) -> None:
    need("nginx", "curl")
    options = TransferBenchOptions(
        size=8 * MiB, shards=2, shard_size=4 * MiB, repeat=1, workdir=tmp_path, ceiling_threads=2
    )
    report = run_transfer_bench(options, console=quiet_console())
    assert [s.title for s in report.sections] == [
        "(a) one 8.00 MiB file",
        "(b) 2 files of 4.00 MiB",
    ]
    for section in report.sections:
        rows = {r.key: r for r in section.results}
        scaling = {k for k, r in rows.items() if r.role == "scaling"}
        assert set(rows) - scaling == {"bdn", "curl", "curl_par", "aria2c", "ceiling"}
        assert scaling and scaling <= {"bdn_w1", "bdn_w2"}
        for r in rows.values():
            assert not r.failed, r.error
            assert (len(r.seconds) == 1) != (r.error is not None)  # a figure or a reason
        assert rows["bdn"].best is not None and rows["curl"].best is not None
        # Every row that ran has its process tree's CPU per GB, and a ratio to BDN's.
        for key in ("bdn", "curl", "curl_par", *scaling):
            assert rows[key].cpu_per_gb is not None and rows[key].cpu_per_gb > 0, key
        assert section.cpu_ratio_to("curl_par") is not None
        assert "the write ceiling" in rows["bdn"].note
    assert list(tmp_path.iterdir()) == []  # the work directory was removed
    json.dumps(report.to_dict())


def test_unavailable_reference_is_shown_not_skipped(tmp_path: Path) -> None:
    need("nginx", "curl")
    options = TransferBenchOptions(
        size=1 * MiB, shards=1, shard_size=1 * MiB, repeat=1, workdir=tmp_path
    )
    report = run_transfer_bench(
        options, console=quiet_console(),
        unavailable={"aria2c": "apt-get install failed: no network"},
    )
    for section in report.sections:
        aria = section.get("aria2c")
        assert (aria.error, aria.failed, aria.seconds) == (
            "apt-get install failed: no network",
            False,
            [],
        )
        assert "not available (apt-get install failed: no network)" in _rendered(section)
    assert report.exit_code == 2


def test_mirror_bench_smoke(tmp_path: Path) -> None:
    report = run_mirror_bench(
        MirrorBenchOptions(shards=2, shard_size=3 * MiB, repeat=1, workdir=tmp_path),
        console=quiet_console(),
    )
    rows = {r.key: r for r in report.sections[0].results}
    assert set(rows) == {"bdn", "cp", "cp_sync", "again"}
    assert all(len(r.seconds) == 1 and r.error is None for r in rows.values())
    assert rows["again"].note == "bytes_transferred 0"
    assert list(tmp_path.iterdir()) == []
