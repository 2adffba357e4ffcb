"""``bdn mirror --workers``: a count or ``auto`` is accepted, the result is the same,
and a bad value is one line that says what to give."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures import make_model, pattern_bytes, run_bdn


def test_mirror_workers_flag(tmp_path: Path) -> None:
    src = make_model(tmp_path / "src", {f"s{i}.bin": pattern_bytes(i, 200_000) for i in range(3)})
    ids = []
    for workers in ("1", "auto"):
        done = run_bdn("mirror", str(src), "--store", f"file://{tmp_path / workers}",
                       "--workers", workers, home=tmp_path)
        assert done.code == 0, done.stderr
        ids.append(done.stdout.strip())
    assert ids[0] == ids[1] and ids[0].startswith("sha256:")
    bad = run_bdn("mirror", str(src), "--store", f"file://{tmp_path / 'x'}", "--workers", "0",
                  home=tmp_path)
    assert bad.code != 0 and "--workers" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
