"""Truss pattern semantics: what each pattern form selects, and which patterns are refused."""

from __future__ import annotations

import doctest

import pytest

import bdn.config.patterns
from bdn.config.patterns import compile_pattern, make_filter, matches, select
from bdn.errors import ConfigError


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        # "*" and "?" stay inside one path segment.
        ("*.safetensors", "model.safetensors", True),
        ("*.safetensors", "sub/model.safetensors", False),
        ("*.safetensors", ".hidden.safetensors", True),
        ("model-?.bin", "model-1.bin", True),
        ("model-?.bin", "model-12.bin", False),
        ("a?b", "a/b", False),
        ("*", "config.json", True),
        ("*", "dir/config.json", False),
        ("*/config.json", "sub/config.json", True),
        ("*/config.json", "a/b/config.json", False),
        ("a**b", "axxb", True),
        ("a**b", "a/b", False),
        # Literal names match exactly.
        ("config.json", "config.json", True),
        ("config.json", "sub/config.json", False),
        ("config.json", "config_json", False),
        # "**/" matches zero or more whole directories.
        ("**/*.json", "a.json", True),
        ("**/*.json", "x/y/a.json", True),
        ("**/*.json", "x/y/a.jsonl", False),
        ("a/**/b.txt", "a/b.txt", True),
        ("a/**/b.txt", "a/x/y/b.txt", True),
        ("a/**/b.txt", "ab.txt", False),
        # A trailing "/**" or "**" matches everything below.
        ("onnx/**", "onnx/model.onnx", True),
        ("onnx/**", "onnx/deep/er/model.onnx", True),
        ("onnx/**", "onnx", False),
        ("onnx/**", "other/onnx/model.onnx", False),
        ("**", "anything/at/all.bin", True),
        # A trailing "/" means the whole directory.
        ("tokenizer/", "tokenizer/vocab.json", True),
        ("tokenizer/", "tokenizer/sub/merges.txt", True),
        ("tokenizer/", "tokenizer", False),
        ("tokenizer/", "tokenizer_config.json", False),
        ("tokenizer/", "x/tokenizer/vocab.json", False),
        # Character classes, negated classes, ranges, literal "]".
        ("model-0000[1-3].bin", "model-00002.bin", True),
        ("model-0000[1-3].bin", "model-00004.bin", False),
        ("[!a]*.txt", "b.txt", True),
        ("[!a]*.txt", "a.txt", False),
        ("[^a]*.txt", "b.txt", True),
        ("[]]x", "]x", True),
        ("[[]x", "[x", True),
        ("a[!x]b", "a/b", False),
        # Regex metacharacters are literal.
        ("a+b(1).bin", "a+b(1).bin", True),
        ("a.b", "axb", False),
        ("weights$", "weights$", True),
        # Matching is case-sensitive.
        ("*.JSON", "a.json", False),
    ],
)
def test_matches(pattern: str, path: str, expected: bool) -> None:
    assert matches(path, pattern) is expected


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("", "non-empty"),
        ("/abs/*.bin", "drop the leading '/'"),
        ("/", "drop the leading '/'"),
        ("model-[12.bin", "no matching ']'"),
        ("[!", "no matching ']'"),
        ("[a/b]", "no matching ']'"),
        ("a//b", "empty segment"),
        ("./config.json", "'.' segment"),
        ("../x", "'..' segment"),
        ("[z-a]", "reversed"),
    ],
)
def test_invalid_pattern_raises_config_error_naming_it(pattern: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_pattern(pattern)
    message = str(info.value)
    assert repr(pattern) in message
    assert fragment in message
    assert "\n" not in message


def test_invalid_pattern_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        matches("a", "[")


_PATHS = [
    "config.json",
    "model-00001.safetensors",
    "model-00002.safetensors",
    "README.md",
    "onnx/model.onnx",
    "onnx/config.json",
    "tokenizer/vocab.json",
    "original/consolidated.safetensors",
]


@pytest.mark.parametrize(
    ("allow", "ignore", "expected"),
    [
        (None, None, _PATHS),
        (None, [], _PATHS),
        ([], None, []),
        (
            ["*.safetensors", "config.json"],
            None,
            ["config.json", "model-00001.safetensors", "model-00002.safetensors"],
        ),
        (None, ["*.md", "onnx/**"], [p for p in _PATHS if p != "README.md" and "onnx" not in p]),
        (["**/*.json"], ["onnx/"], ["config.json", "tokenizer/vocab.json"]),
        (
            ["**/*.safetensors"],
            ["original/"],
            ["model-00001.safetensors", "model-00002.safetensors"],
        ),
        (["*.gguf"], None, []),
    ],
)
def test_select(allow: list[str] | None, ignore: list[str] | None, expected: list[str]) -> None:
    assert select(_PATHS, allow, ignore) == expected


def test_select_preserves_input_order() -> None:
    paths = ["z.json", "a.json", "m.json"]
    assert select(iter(paths), ["*.json"], None) == paths


@pytest.mark.parametrize(("allow", "ignore"), [(["ok", "/bad"], None), (None, ["[bad"])])
def test_select_rejects_invalid_patterns_even_with_no_paths(
    allow: list[str] | None, ignore: list[str] | None
) -> None:
    with pytest.raises(ConfigError):
        select([], allow, ignore)


def test_make_filter_matches_select() -> None:
    keep = make_filter(["**/*.json"], ["tokenizer/"])
    assert [p for p in _PATHS if keep(p)] == select(_PATHS, ["**/*.json"], ["tokenizer/"])


def test_compile_pattern_is_cached() -> None:
    assert compile_pattern("**/*.bin") is compile_pattern("**/*.bin")


def test_doctests() -> None:
    assert doctest.testmod(bdn.config.patterns).failed == 0
