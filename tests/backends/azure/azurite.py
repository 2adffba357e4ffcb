"""Azurite, the Azure Storage emulator (npm ``azurite``), as a real process on loopback.

``.ci/run`` installs it into ``.ci/node``; a developer may also have
``azurite-blob`` on ``PATH``. Tests that need it skip, saying why, when it is
in neither place. Azurite serves accounts path-style:
``http://127.0.0.1:<port>/<account>``, which is what ``BDN_AZURE_ENDPOINT_URL``
(the part before the account) selects in BDN.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.emulator import StorageEmulator

__all__ = ["ACCOUNT", "ACCOUNT_KEY", "Azurite", "azurite", "azurite_binary"]

# Azurite's built-in development account: public, documented by Microsoft.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
_REPO = Path(__file__).resolve().parents[3]
_LISTENING = re.compile(r"listens on (http://127\.0\.0\.1:\d+)")


def azurite_binary() -> str | None:
    """``azurite-blob`` from ``.ci/node`` (what ``.ci/run`` installs) or ``PATH``."""
    local = _REPO / ".ci" / "node" / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return shutil.which("azurite-blob")


@dataclass(frozen=True)
class Azurite(StorageEmulator):
    """A running Azurite: ``endpoint`` is what ``BDN_AZURE_ENDPOINT_URL`` would hold."""

    @property
    def account_url(self) -> str:
        return f"{self.endpoint}/{ACCOUNT}"

    def client(self) -> Any:
        """A ``BlobServiceClient`` on the development account."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.account_url, credential={
            "account_name": ACCOUNT, "account_key": ACCOUNT_KEY})

    def make_container(self, name: str, *, public: bool = False) -> str:
        self.client().create_container(name, public_access="container" if public else None)
        return name

    def upload(self, container: str, name: str, data: bytes) -> Any:
        """Write a blob (Put Blob: Azure records its Content-MD5); returns its properties."""
        blob = self.client().get_blob_client(container, name)
        blob.upload_blob(data, overwrite=True)
        return blob.get_blob_properties()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """Azurite's blob service on a free loopback port, in memory, one per session."""
    binary = azurite_binary()
    if binary is None:
        pytest.skip("azurite is not installed: run `npm install --prefix .ci/node azurite` "
                    "(.ci/run does) to run the Azure tests")
    workdir = tempfile.mkdtemp(prefix="bdn-azurite-")
    try:
        with running(binary, Path(workdir)) as endpoint:
            yield Azurite(endpoint=endpoint)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def running(binary: str, workdir: Path) -> Iterator[str]:
    """Azurite's blob service on a free loopback port, in memory, with ``workdir`` as
    its working directory; yields its endpoint, and stops it on the way out (also
    used by ``bdn bench mirror --source azure``)."""
    proc = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
         "--silent", "--skipApiVersionCheck", "--disableTelemetry", "--loose"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        process_group=0)
    try:
        yield _wait_listening(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The URL Azurite prints once it listens; fails the session if it never does."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line.strip())
        match = _LISTENING.search(line)
        if match:
            # Keep reading what it prints, so a full pipe can never stall it.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return match.group(1)
    raise RuntimeError(f"azurite did not start: {' | '.join(seen[-5:])}")
