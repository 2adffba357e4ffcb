"""Which sources the mirror service may read: the operator's allowlist (``--allow-source``).

Anyone holding the mirror API's token chooses what the server reads, and the
server reads with its own filesystem and credentials. Without a bound, a
``file://`` source naming the server's secrets directory copied those secrets
into the store, where any puller could read them back (issue #11). So every
submitted source must fall under a rule the operator wrote; the default (no
rule) allows nothing.

A rule is a URI prefix that matches whole path segments:

====================================  ==============================================
``hf://``                             every Hugging Face repo
``hf://Qwen/``                        every repo of the org ``Qwen``
``hf://Qwen/Qwen3-8B``                that repo (any revision)
``s3://`` / ``gs://`` / ``r2://``     every bucket of that scheme
``s3://weights-bucket/models/``       keys under ``models/`` of that bucket
``r2://acct``, ``r2://acct.bucket``   an R2 account, or one bucket of it
``file:///data/models``               that directory and everything below it
``file://``                           every local directory (rarely what you want)
====================================  ==============================================

``s3://b/models`` does not allow ``s3://b/models-private``, nor a source
with ``.`` or ``..`` segments. A ``file://``
rule and source are compared after resolving symlinks on the server, so a
link inside an allowed directory that leads outside it is refused. Upstream
endpoints (S3, Hugging Face, GCS emulator, R2) are never part of a request:
they come from the server's own settings only.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bdn.config.uri import SCHEME_KINDS, ParsedSource
from bdn.config.weights import WeightsEntry
from bdn.errors import BdnError, ConfigError

__all__ = ["ALLOW_FLAG", "SourceNotAllowed", "SourcePolicy"]

ALLOW_FLAG = "--allow-source PREFIX (env BDN_MIRROR_ALLOW_SOURCES)"
"""How an operator allows a source, as refusals and start-up warnings say it."""

_RULE_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_SEGMENT_RE = re.compile(r"[^\s@?#*]+")

# Scheme -> an example rule, for refusals that tell the operator what to add.
_EXAMPLES: Mapping[str, str] = {
    "hf": "hf://ORG/", "s3": "s3://BUCKET/PREFIX/", "gs": "gs://BUCKET/PREFIX/",
    "r2": "r2://ACCOUNT.BUCKET/PREFIX/", "file": "file:///DIR",
    "azure": "azure://ACCOUNT/CONTAINER/PREFIX/", "cw": "cw://BUCKET/PREFIX/",
    "https": "https://HOST/PATH/",
}

Location = tuple[str, ...]
"""A source as path segments, scheme first: ``("s3", bucket, *prefix parts)``."""


class SourceNotAllowed(BdnError, PermissionError):
    """A submitted source falls under no ``--allow-source`` rule; nothing was read."""

    def __init__(self, message: str, *, source: str) -> None:
        super().__init__(message)
        self.source = source


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """The operator's allowlist. Build with :meth:`parse`; the empty policy allows nothing.

    Attributes:
        rules: the rules as the operator wrote them (for logs).
        prefixes: each rule as a :data:`Location` prefix.
    """

    rules: tuple[str, ...] = ()
    prefixes: tuple[Location, ...] = ()

    @classmethod
    def parse(cls, rules: Iterable[str], *, field: str = "--allow-source") -> SourcePolicy:
        """Parse rules (see the module docstring); blank ones are skipped.

        Raises:
            ConfigError: a rule with an unknown scheme, a relative ``file://``
                path, ``..``, a revision or a wildcard, naming ``field``.
        """
        texts = tuple(t.strip() for t in rules if t.strip())
        return cls(texts, tuple(_parse_rule(t, field) for t in texts))

    def allows(self, source: ParsedSource) -> bool:
        """Whether some rule's segments are a prefix of ``source``'s.

        A bucket prefix with ``.`` or ``..`` segments is never allowed: an HTTP
        client may collapse them in the URL and so read outside the rule.
        """
        if any(p in (".", "..") for p in source.prefix.split("/")):
            return False
        loc = _location(source)
        return any(loc[:len(p)] == p for p in self.prefixes)

    def check(self, entries: Sequence[WeightsEntry], where: str = "weights") -> None:
        """Refuse the first entry whose source no rule allows; reads nothing of it.

        Raises:
            SourceNotAllowed: one line naming the entry, its source and the flag.
        """
        for i, entry in enumerate(entries):
            parsed = entry.parsed_source
            if not self.allows(parsed):
                raise SourceNotAllowed(
                    f"{where}[{i}].source: {entry.source!r} is not allowed on this mirror "
                    f"server; its operator allows sources with {ALLOW_FLAG}, e.g. "
                    f"--allow-source {_EXAMPLES.get(parsed.scheme, 'hf://ORG/')}",
                    source=entry.source)


def _parse_rule(text: str, field: str) -> Location:
    """One rule as a :data:`Location` prefix; ConfigError naming ``field`` otherwise."""
    m = _RULE_RE.fullmatch(text)
    scheme = m.group(1).lower() if m else ""
    if not m or scheme not in SCHEME_KINDS:
        if text.startswith("/"):
            return ("file", *_local_parts(text))
        raise ConfigError(f"{text!r} is not a source prefix; write one of "
                          f"{', '.join(f'{s}://' for s in SCHEME_KINDS)} followed by what it "
                          "allows, e.g. hf://Qwen/ or s3://bucket/models/", field=field)
    rest = m.group(2)
    if scheme == "file":
        if rest and not rest.startswith("/"):
            raise ConfigError(f"{text!r} is not an absolute directory; write "
                              "file:///absolute/dir", field=field)
        return ("file", *_local_parts(rest)) if rest else ("file",)
    parts = [p for p in rest.split("/") if p]
    bad = [p for p in parts if p in (".", "..") or not _SEGMENT_RE.fullmatch(p)]
    if bad or (scheme == "hf" and len(parts) > 2):
        raise ConfigError(f"{text!r}: {bad[0] if bad else rest!r} cannot be matched; a rule is "
                          "a plain prefix (no .., @revision or wildcards), an hf:// rule "
                          "an org or org/repo", field=field)
    if scheme == "r2" and parts:
        account, _, bucket = parts[0].partition(".")
        parts[:1] = [account, bucket] if bucket else [account]
    return (scheme, *parts)


def _local_parts(path: str) -> tuple[str, ...]:
    """A local directory's segments after resolving symlinks on this machine."""
    real = os.path.realpath(posixpath.normpath(path))
    return tuple(p for p in real.split("/") if p)


def _location(source: ParsedSource) -> Location:
    """``source`` as a :data:`Location`; a local one resolved like the rules."""
    if source.kind == "local":
        return ("file", *_local_parts(source.path or "/"))
    if source.kind == "hf":
        return ("hf", *(source.repo_id or "").split("/"))
    if source.kind == "https":
        return ("https", *(p for p in (source.url or "").split("://", 1)[-1].split("/") if p))
    head: tuple[str, ...] = ((source.account_id or "", source.bucket or "")
                             if source.kind in ("r2", "azure") else (source.bucket or "",))
    return (source.scheme, *head, *(p for p in source.prefix.split("/") if p))
