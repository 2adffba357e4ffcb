"""Mirror jobs as records: the id derived from config, the job's state, its persisted form.

A job mirrors every entry of one submitted ``weights:`` list. Its id is
derived from the entries' config hashes and mount locations, sorted
(:func:`job_id`), so re-submitting a config names the same job; the scheduler
(:mod:`bdn.mirror.service.scheduler`) coalesces on it. A job's record
(:meth:`Job.to_record`) is what the state dir keeps
(:mod:`bdn.mirror.service.state`): entries as Truss writes them, so only
secret NAMES are written.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from bdn.config.validate import reject_unknown_keys, type_name
from bdn.config.weights import WeightsEntry, parse_weights
from bdn.errors import ConfigError

__all__ = ["RECORD_VERSION", "STATES", "EntryResult", "Job", "JobState", "job_id",
           "parse_submission"]

JobState = Literal["queued", "running", "succeeded", "failed"]
STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed")

RECORD_VERSION = 1


def job_id(entries: Sequence[WeightsEntry]) -> str:
    """The id of the job mirroring ``entries``: ``mj-`` + 32 hex of a SHA-256 over the
    sorted ``config_hash mount_location`` pairs (entry order does not matter).

    The mount location is part of the id because a job answers with a manifest
    per mount location; two lists that differ only there are two jobs, but the
    second moves no bytes (the store already holds every blob).
    """
    lines = sorted(f"{e.config_hash()} {e.mount_location or ''}" for e in entries)
    return "mj-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]


def parse_submission(body: object) -> tuple[WeightsEntry, ...]:
    """Validate a ``POST /v1/mirrors`` body, ``{"weights": [<Truss entries>]}``.

    Raises:
        ConfigError: one line naming the field (``weights[0].source``) and the fix.
    """
    if not isinstance(body, Mapping):
        raise ConfigError(
            f'must be a JSON object {{"weights": [...]}}, got {type_name(body)}', field="request"
        )
    reject_unknown_keys(body, ("weights",), "request")
    weights = body.get("weights")
    if weights is None:
        raise ConfigError("is missing; send the weights: list of your Truss config",
                          field="weights")
    if isinstance(weights, list) and not weights:
        raise ConfigError("is empty; list at least one entry with source and mount_location",
                          field="weights")
    return parse_weights(weights)


@dataclass(frozen=True, slots=True)
class EntryResult:
    """What the mirror of one entry of a job produced."""

    mount_location: str
    manifest_id: str
    files: int
    total_bytes: int
    bytes_planned: int
    bytes_transferred: int
    bytes_stored: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class Job:
    """One mirror job. Persisted fields are listed in :meth:`to_record`; the rest
    live in memory only.

    ``bytes_total`` counts the planned transfer bytes of entries planned so far
    (it grows as each entry's source is listed) and ``bytes_done`` the bytes
    read for them; both restart from the finished entries when a job starts again.
    """

    id: str
    entries: tuple[WeightsEntry, ...]
    seq: int
    state: JobState = "queued"
    results: list[EntryResult | None] = field(default_factory=list)
    error: str | None = None
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    mirrors: int = 0
    # In memory only.
    in_flight: int = 0
    estimate: int | None = None
    resumed: bool = False
    current_done: int = 0
    started_mono: float | None = None
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if not self.results:
            self.results = [None] * len(self.entries)

    @property
    def bytes_total(self) -> int:
        return sum(r.bytes_planned for r in self.results if r) + self.in_flight

    @property
    def bytes_done(self) -> int:
        return sum(r.bytes_planned for r in self.results if r) + self.current_done

    def to_public(self) -> dict[str, Any]:
        """The body of ``GET /v1/mirrors/{id}``."""
        return {
            "id": self.id,
            "state": self.state,
            "manifests": [{"mount_location": r.mount_location, "manifest_id": r.manifest_id}
                          for r in self.results if r],
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "error": self.error,
            "entries": len(self.entries),
            "attempts": self.attempts,
            "mirrors": self.mirrors,
            "submitted_at": _iso(self.submitted_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }

    def to_record(self) -> dict[str, Any]:
        """The persisted form: entries as Truss writes them (secret names only)."""
        return {
            "version": RECORD_VERSION,
            "id": self.id,
            "seq": self.seq,
            "state": self.state,
            "entries": [e.to_dict() for e in self.entries],
            "results": [r.to_dict() if r else None for r in self.results],
            "error": self.error,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "mirrors": self.mirrors,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Job:
        """Rebuild a job from :meth:`to_record`'s output.

        Raises:
            ValueError: (ConfigError included) the record is malformed or its id
                does not match its entries.
        """
        if data.get("version") != RECORD_VERSION or data.get("state") not in STATES:
            raise ValueError(f"unknown record version or state: {data.get('version')!r}, "
                             f"{data.get('state')!r}")
        entries = parse_weights(data["entries"])
        results = [EntryResult(**r) if r else None for r in data["results"]]
        if data["id"] != job_id(entries) or len(results) != len(entries):
            raise ValueError("the record's id or results do not match its entries")
        return cls(
            id=data["id"], entries=entries, seq=int(data["seq"]), state=data["state"],
            results=results, error=data.get("error"), submitted_at=data["submitted_at"],
            started_at=data.get("started_at"), finished_at=data.get("finished_at"),
            attempts=int(data.get("attempts", 0)), mirrors=int(data.get("mirrors", 0)),
        )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
