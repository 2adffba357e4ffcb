"""The progress line names the source it waits on while no byte arrives."""

from __future__ import annotations

import io

from bdn.cli.progress import ByteProgress, StallNotice, source_label


def test_notice_names_the_stalled_source_after_a_while() -> None:
    now = [100.0]
    notice = StallNotice("origin 10.0.0.5:9000", after=5.0, clock=lambda: now[0])
    now[0] += 4.9
    assert notice.text() == ""
    now[0] += 15.1
    assert notice.text() == "waiting on origin 10.0.0.5:9000 for 20s"
    notice.moved()
    assert notice.text() == ""


def test_bytes_moving_reset_the_wait_and_labels_name_the_host() -> None:
    bar = ByteProgress("pull", stream=io.StringIO(), enabled=False,
                       source=source_label("http://example.test:8080/store"))
    assert bar.stall.source == "origin example.test:8080"
    assert source_label("s3://bucket/p", "unix:///run/bdn.sock") == "agent unix:///run/bdn.sock"
    bar.advance(10)
    assert bar.stall.text() == ""
