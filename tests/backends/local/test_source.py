"""LocalSource: walking a real directory tree, symlink policy, special files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bdn.backends.base import Source
from bdn.backends.local.source import LocalSource
from bdn.errors import SourceError, SourceNotFound
from tests.backends.helpers import read_source
from tests.fixtures import make_model


def source(root: Path) -> LocalSource:
    return LocalSource(root, f"file://{root}")


async def test_lists_nested_tree_sorted(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m", {
        "config.json": b"{}",
        "b/deep/er/w.bin": b"w" * 10,
        "a.safetensors": b"a" * 3,
        "b/x.bin": b"",
    })
    src = source(root)
    assert isinstance(src, Source) and src.kind == "local"
    assert await src.resolve() is None
    objs = await src.list()
    assert [o.path for o in objs] == ["a.safetensors", "b/deep/er/w.bin", "b/x.bin",
                                      "config.json"]
    assert [o.size for o in objs] == [3, 10, 0, 2]
    assert all(o.etag is None and o.sha256 is None for o in objs)
    st = os.stat(root / "a.safetensors")
    assert objs[0].identity == (f"local:{os.path.realpath(root / 'a.safetensors')}:3:"
                                f"{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}")
    assert await read_source(src, objs[1]) == b"w" * 10


async def test_identity_changes_when_content_may_have(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m", {"w.bin": b"one"})
    src = source(root)
    before = (await src.list())[0].identity
    assert (await src.list())[0].identity == before
    (root / "w.bin").write_bytes(b"two")  # same size, new content
    assert (await src.list())[0].identity != before


async def test_empty_directory_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert await source(tmp_path / "empty").list() == []


async def test_symlinks_inside_root_are_followed(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m", {"shards/a.bin": b"aaa", "shards/b.bin": b"bb"})
    (root / "alias.bin").symlink_to("shards/a.bin")
    (root / "mirror").symlink_to(root / "shards", target_is_directory=True)
    src = source(root)
    objs = {o.path: o for o in await src.list()}
    assert sorted(objs) == ["alias.bin", "mirror/a.bin", "mirror/b.bin", "shards/a.bin",
                            "shards/b.bin"]
    assert objs["alias.bin"].size == 3
    # The identity names the real file, so a renamed link still dedups.
    assert objs["alias.bin"].identity == objs["shards/a.bin"].identity
    assert await read_source(src, objs["mirror/b.bin"]) == b"bb"


async def test_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not weights")
    root = make_model(tmp_path / "m", {"a.bin": b"a"})
    (root / "sneaky").symlink_to(outside)
    with pytest.raises(SourceError) as info:
        await source(root).list()
    message = str(info.value)
    assert str(root / "sneaky") in message and str(outside) in message
    assert "refusing symlink that escapes the source directory" in message
    assert "copy the file in or mirror the target directory" in message


async def test_directory_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    root = make_model(tmp_path / "m", {"a.bin": b"a"})
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(SourceError, match="escapes the source directory"):
        await source(root).list()


async def test_broken_symlink_and_loops_are_errors(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m", {"a.bin": b"a"})
    (root / "dangling").symlink_to(root / "gone")
    with pytest.raises(SourceError, match="broken symlink"):
        await source(root).list()
    (root / "dangling").unlink()
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)
    with pytest.raises(SourceError, match="symlink loop"):
        await source(root).list()


async def test_root_may_itself_be_a_symlink(tmp_path: Path) -> None:
    real = make_model(tmp_path / "real", {"a.bin": b"a"})
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert [o.path for o in await source(tmp_path / "link").list()] == ["a.bin"]


async def test_fifo_is_refused(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m", {"a.bin": b"a"})
    os.mkfifo(root / "pipe")
    with pytest.raises(SourceError, match=r"pipe.*not a regular file"):
        await source(root).list()


async def test_missing_or_non_directory_root(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match=re.escape(str(tmp_path / "absent"))):
        await source(tmp_path / "absent").list()
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(SourceNotFound, match="not a directory"):
        await source(tmp_path / "file").list()


async def test_unicode_names(tmp_path: Path) -> None:
    files = {"模型/权重-é.safetensors": b"x", "ünï/çødé.bin": b"yy", "emoji-🚀.json": b"{}"}
    root = make_model(tmp_path / "m", files)
    objs = await source(root).list()
    assert [o.path for o in objs] == sorted(files)
    assert {o.path: o.size for o in objs} == {k: len(v) for k, v in files.items()}


async def test_names_that_are_not_manifest_paths_are_refused(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m", {"back\\slash.bin": b"x"})
    with pytest.raises(SourceError, match="backslash"):
        await source(root).list()
