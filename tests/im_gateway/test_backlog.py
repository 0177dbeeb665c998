"""The listen backlog against the kernel's cap (``im_gateway.backlog``): pure, no socket."""

from __future__ import annotations

from pathlib import Path

from im_gateway.backlog import capped_note, kernel_cap, migrate_note


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


def test_workers_are_told_when_a_dead_workers_queue_would_be_reset() -> None:
    note = migrate_note(2, 0)
    assert note is not None
    assert "sysctl -w net.ipv4.tcp_migrate_req=1" in note
    assert migrate_note(2, 1) is None  # handed to the other workers
    assert migrate_note(1, 0) is None  # one process: no other listener to hand them to
    assert migrate_note(4, None) is None  # a kernel without the setting
