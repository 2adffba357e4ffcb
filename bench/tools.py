"""Reference tools of ``bdn bench`` and the machine facts of the report header.

A table says what to look for, how to install it and how to read its version;
missing tools are installed with apt-get when we may.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bdn.config.units import format_bytes
from bench.harness import BenchAbort

# ---------------------------------------------------------------------------
# Reference tools


@dataclass(frozen=True, slots=True)
class Tool:
    """A program a bench needs: how to find it, install it and name its version."""

    name: str
    binary: str
    apt_package: str
    version_argv: tuple[str, ...]
    version_pattern: str


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool("nginx", "nginx", "nginx", ("nginx", "-v"), r"nginx/(\S+)"),
        Tool("curl", "curl", "curl", ("curl", "--version"), r"curl (\S+)"),
        Tool("aria2c", "aria2c", "aria2", ("aria2c", "--version"), r"aria2 version (\S+)"),
        Tool("cp", "cp", "coreutils", ("cp", "--version"), r"coreutils\)? (\S+)"),
        Tool("sync", "sync", "coreutils", ("sync", "--version"), r"coreutils\)? (\S+)"),
    )
}
"""Every external program a bench may run, by name (policy as data, not branches)."""

_APT_TIMEOUT_S = 600


def tool_version(name: str) -> str | None:
    """The installed version of tool ``name``, or ``None`` when it is not on PATH."""
    tool = TOOLS[name]
    if shutil.which(tool.binary) is None:
        return None
    try:
        proc = subprocess.run(
            list(tool.version_argv), capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(tool.version_pattern, proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"


def install_command(tools: Sequence[Tool]) -> str:
    """The exact shell command that installs ``tools`` on Debian/Ubuntu."""
    sudo = "" if os.geteuid() == 0 else "sudo "
    packages = " ".join(dict.fromkeys(t.apt_package for t in tools))
    return f"{sudo}apt-get install -y --no-install-recommends {packages}"


def _apt_install(packages: Sequence[str]) -> str | None:
    """Install packages with apt-get (``update`` and retry once); the error text or ``None``."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    error = None
    for attempt in (install, ["apt-get", "update"], install):
        try:
            proc = subprocess.run(
                attempt,
                capture_output=True,
                text=True,
                env=env,
                timeout=_APT_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"{' '.join(attempt)}: {err}"
        if proc.returncode == 0 and attempt is install:
            return None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            error = f"{' '.join(attempt[:2])} exited {proc.returncode}: {tail[-1] if tail else ''}"
    return error


def missing_tools(names: Sequence[str]) -> dict[str, str]:
    """``{name: reason}`` for each of the tools ``names`` that is not on PATH."""
    return {
        n: f"{TOOLS[n].binary} not on PATH; install with: {install_command([TOOLS[n]])}"
        for n in names
        if shutil.which(TOOLS[n].binary) is None
    }


def missing_references(
    names: Sequence[str], unavailable: Mapping[str, str] | None, *, nginx_serves: str
) -> dict[str, str]:
    """``{tool: reason}`` for each of ``names`` not on PATH or already known
    ``unavailable`` (an install attempt failed), so each shows as a "not
    available" row, never silently skipped. nginx, which serves ``nginx_serves``,
    is no reference: without it nothing could be measured, so it raises
    ``BenchAbort`` (exit 2)."""
    missing = {**missing_tools(names), **(unavailable or {})}
    if "nginx" in missing:
        raise BenchAbort(f"needs nginx to serve {nginx_serves}: {missing['nginx']}")
    return missing


def ensure_tools(names: Sequence[str], *, allow_install: bool, console: Console) -> dict[str, str]:
    """Make sure the tools ``names`` are on PATH, installing them when we may.

    Installs with apt-get only when running as root, apt-get exists and
    ``allow_install`` is set, and says so on ``console``.

    Returns:
        ``{name: reason}`` for tools still missing after an install attempt, so
        the report can show them as "not available (reason)".

    Raises:
        BenchAbort: (exit 2) a tool is missing and we may not install it; the
            message is the one line naming the command that installs it (the
            caller prefixes it with the bench's name).
    """
    missing = [TOOLS[n] for n in names if shutil.which(TOOLS[n].binary) is None]
    if not missing:
        return {}
    listed = ", ".join(t.binary for t in missing)
    if not (allow_install and os.geteuid() == 0 and shutil.which("apt-get")):
        raise BenchAbort(f"needs {listed} (not on PATH); install with: {install_command(missing)}")
    packages = list(dict.fromkeys(t.apt_package for t in missing))
    console.print(f"[bold]installing missing reference tools:[/] {install_command(missing)}")
    error = _apt_install(packages)
    unavailable: dict[str, str] = {}
    for tool in missing:
        if shutil.which(tool.binary) is None:
            why = f"install failed: {error}" if error else "still not on PATH after install"
            unavailable[tool.name] = f"{tool.binary} not on PATH; {why}"
        else:
            console.print(f"installed {tool.name} {tool_version(tool.name)}")
    return unavailable


# ---------------------------------------------------------------------------
# Machine facts


@dataclass(frozen=True, slots=True)
class MachineFacts:
    """What the reader needs to judge the figures: hardware, kernel and tool versions."""

    cores: int
    ram_bytes: int
    kernel: str
    python: str
    filesystem: str
    tools: dict[str, str]

    def summary(self) -> str:
        tools = " · ".join(f"{k} {v}" for k, v in self.tools.items())
        return (
            f"{self.cores} cores · {format_bytes(self.ram_bytes)} RAM · "
            f"Linux {self.kernel} · Python {self.python} · workdir on {self.filesystem}"
            + (f" · {tools}" if tools else "")
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field under its own name, for ``--json`` (the tools map copied)."""
        return asdict(self)


def _ram_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def filesystem_of(path: Path) -> str:
    """``"<fstype> (<device>)"`` of the mount holding ``path``, from /proc/mounts."""
    target = str(path.resolve())
    best = ("", "unknown", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    return f"{best[1]} ({best[2]})"


def machine_facts(tool_names: Sequence[str], workdir: Path) -> MachineFacts:
    """Collect the header facts; tools not installed are listed as ``missing``."""
    return MachineFacts(
        cores=os.cpu_count() or 1,
        ram_bytes=_ram_bytes(),
        kernel=platform.release(),
        python=platform.python_version(),
        filesystem=filesystem_of(workdir),
        tools={n: tool_version(n) or "missing" for n in tool_names},
    )
