"""Session-wide fixtures: a clean environment and real servers on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

# GCS servers (gcp-storage-emulator, and a fake of Google's auth endpoints).
from tests.gcsemulator import fake_google as fake_google
from tests.gcsemulator import gcs_bucket as gcs_bucket
from tests.gcsemulator import gcs_emulator as gcs_emulator

# The fault-injecting HTTP origin, for every test module that needs it.
from tests.httpserver import fault_server as fault_server
from tests.httpserver import fault_server_session as fault_server_session

# Variables that change where BDN or boto3 look for things; a test that needs
# one sets it itself, so a developer's shell cannot leak into the suite.
_CLEARED_PREFIXES = ("BDN_", "AWS_", "HF_", "STORAGE_EMULATOR_HOST", "GOOGLE_", "CLOUDSDK_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    # boto3 must never reach for real credentials or instance metadata.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server: its endpoint and credentials it accepts."""

    endpoint_url: str
    access_key_id: str = "testing-access-key"
    secret_access_key: str = "testing-secret-key"
    region: str = "us-east-1"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """Environment that points boto3 (and a `bdn` subprocess) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's real S3 server on 127.0.0.1, one per test session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoS3(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


_bucket_counter = iter(range(1_000_000))


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> str:
    """A fresh, empty bucket on the session's moto server."""
    return moto_s3.make_bucket(f"bdn-test-{next(_bucket_counter)}-{os.getpid()}")
