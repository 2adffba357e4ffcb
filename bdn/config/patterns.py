"""File-selection patterns with Truss semantics: ``allow_patterns`` / ``ignore_patterns``.

Paths are relative and ``/``-separated, as a source lists them. The rules:

- ``*`` and ``?`` never cross ``/``, so ``*.safetensors`` selects top-level
  files only; ``[...]`` (and ``[!...]``) is a character class.
- ``**/`` matches zero or more whole directories: ``**/*.json`` matches
  ``a.json`` and ``x/y/a.json``.
- A trailing ``/**`` (or a lone ``**``) matches everything below.
- A pattern ending in ``/`` means everything under that directory:
  ``tokenizer/`` is ``tokenizer/**``.

Patterns compile to anchored regular expressions once and are cached, since a
mirror tests every listed path against the same handful of patterns.

>>> matches("model.safetensors", "*.safetensors")
True
>>> matches("sub/model.safetensors", "*.safetensors")
False
>>> select(["a.json", "x/b.json", "README.md"], ["**/*.json"], None)
['a.json', 'x/b.json']
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence

from bdn.errors import ConfigError

__all__ = ["compile_pattern", "make_filter", "matches", "select"]

# Regex fragments; ``/`` is excluded everywhere except ``**``.
_ANY_RUN = "[^/]*"
_ANY_ONE = "[^/]"
_ANY_DIRS = "(?:[^/]+/)*"
_EVERYTHING = ".*"


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile one pattern to a regex that must match a whole path (use ``fullmatch``).

    Args:
        pattern: a Truss pattern such as ``*.safetensors``, ``**/*.json`` or
            ``tokenizer/``.

    Returns:
        The compiled regular expression; results are cached per pattern.

    Raises:
        ConfigError: the pattern is empty, absolute, has an unbalanced ``[``,
            an empty segment (``a//b``) or a ``.``/``..`` segment; the message
            names the pattern.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(
            f"invalid pattern {pattern!r}: patterns must be non-empty strings; "
            "use e.g. '*.safetensors'"
        )
    if pattern.startswith("/"):
        raise ConfigError(
            f"invalid pattern {pattern!r}: patterns are relative to the source root; "
            f"drop the leading '/', e.g. {pattern.lstrip('/') or '**'!r}"
        )
    if pattern.endswith("/"):
        # "tokenizer/" names a directory; Truss takes it to mean its whole subtree.
        pattern = pattern + "**"
    segments = pattern.split("/")
    parts: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "**":
            # "**" as a whole segment crosses directories; elsewhere it is just "*".
            parts.append(_EVERYTHING if index == last else _ANY_DIRS)
            continue
        parts.append(_translate_segment(segment, pattern))
        if index != last:
            parts.append("/")
    return re.compile("".join(parts), re.DOTALL)


def _translate_segment(segment: str, pattern: str) -> str:
    """Translate one ``/``-free segment of ``pattern`` to a regex fragment."""
    if segment in ("", ".", ".."):
        what = "an empty segment ('//')" if segment == "" else f"a {segment!r} segment"
        raise ConfigError(
            f"invalid pattern {pattern!r}: it contains {what}, which no listed path has; "
            "write the path relative to the source root without it"
        )
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        char = segment[i]
        if char == "*":
            # Collapse runs of "*" so "a**b" cannot backtrack quadratically.
            while i < n and segment[i] == "*":
                i += 1
            out.append(_ANY_RUN)
            continue
        if char == "?":
            out.append(_ANY_ONE)
        elif char == "[":
            fragment, i = _translate_class(segment, i, pattern)
            out.append(fragment)
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _translate_class(segment: str, start: int, pattern: str) -> tuple[str, int]:
    """Translate the ``[...]`` class opening at ``segment[start]``; return it and the next index."""
    i = start + 1
    negate = i < len(segment) and segment[i] in "!^"
    if negate:
        i += 1
    # A "]" right after the opening (or the negation) is a literal member.
    first = i
    if i < len(segment) and segment[i] == "]":
        i += 1
    end = segment.find("]", i)
    if end < 0:
        raise ConfigError(
            f"invalid pattern {pattern!r}: '[' at {segment!r} has no matching ']' in the same "
            "path segment; close the class or write '[[]' for a literal '['"
        )
    body = segment[first:end]
    members: list[str] = []
    j = 0
    while j < len(body):
        if j + 2 < len(body) and body[j + 1] == "-":
            low, high = body[j], body[j + 2]
            if low > high:
                raise ConfigError(
                    f"invalid pattern {pattern!r}: range {low}-{high} is reversed; "
                    f"write {high}-{low}"
                )
            members.append(f"{re.escape(low)}-{re.escape(high)}")
            j += 3
        else:
            members.append(re.escape(body[j]))
            j += 1
    # A negated class must still never match "/", or "*"-like rules would leak.
    head = "[^/" if negate else "["
    return head + "".join(members) + "]", end + 1


def matches(path: str, pattern: str) -> bool:
    """Return whether the relative ``path`` matches ``pattern`` (Truss semantics).

    Raises:
        ConfigError: ``pattern`` is invalid (see :func:`compile_pattern`).

    >>> matches("x/y/a.json", "**/*.json"), matches("tokenizer/vocab.txt", "tokenizer/")
    (True, True)
    """
    return compile_pattern(pattern).fullmatch(path) is not None


def make_filter(allow: Sequence[str] | None, ignore: Sequence[str] | None) -> Callable[[str], bool]:
    """Build a predicate for one path: allowed (or ``allow`` is None) and not ignored.

    Every pattern is compiled up front, so an invalid one fails here even when
    no path is ever tested.

    Raises:
        ConfigError: a pattern is invalid.
    """
    allow_res = None if allow is None else [compile_pattern(p) for p in allow]
    ignore_res = [compile_pattern(p) for p in ignore or ()]

    def keep(path: str) -> bool:
        if allow_res is not None and not any(r.fullmatch(path) for r in allow_res):
            return False
        return not any(r.fullmatch(path) for r in ignore_res)

    return keep


def select(
    paths: Iterable[str], allow: Sequence[str] | None, ignore: Sequence[str] | None
) -> list[str]:
    """Keep the paths that match any ``allow`` pattern (all, if None) and no ``ignore`` pattern.

    Args:
        paths: relative ``/``-separated paths; their order is preserved.
        allow: patterns a path must match one of, or None to allow every path.
            An empty sequence allows nothing.
        ignore: patterns that exclude a path; None or empty excludes nothing.

    Returns:
        The kept paths, in input order.

    Raises:
        ConfigError: a pattern is invalid.
    """
    keep = make_filter(allow, ignore)
    return [path for path in paths if keep(path)]
