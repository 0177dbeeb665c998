"""The listen backlog against the kernel's cap (``im_gateway.backlog``): pure, no socket."""

from __future__ import annotations

from pathlib import Path

from im_gateway.backlog import capped_note, kernel_cap


def test_a_backlog_within_the_cap_needs_no_word() -> None:
    assert capped_note(1024, 4096) is None
    assert capped_note(4096, 4096) is None
    assert capped_note(1024, None) is None  # not Linux: nothing to compare with


def test_a_backlog_above_the_cap_names_the_cap_and_both_fixes() -> None:
    note = capped_note(1024, 128)
    assert note is not None
    assert "net.core.somaxconn = 128" in note
    assert "at most 128 connections" in note
    assert "sysctl -w net.core.somaxconn=1024" in note
    assert "lower --listen-backlog" in note


def test_the_cap_is_read_from_the_kernels_file(tmp_path: Path) -> None:
    cap = tmp_path / "somaxconn"
    cap.write_text("4096\n")
    assert kernel_cap(cap) == 4096
    cap.write_text("not a number\n")
    assert kernel_cap(cap) is None
    assert kernel_cap(tmp_path / "missing") is None
