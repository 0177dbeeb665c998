"""Package boundaries and small invariants."""

from __future__ import annotations

import ast
from pathlib import Path

from im_gateway.ids import MessageIds

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        if "/v1/" in path.as_posix():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return found


def test_the_hub_never_imports_the_gateway() -> None:
    """transmit_hub does not depend on im_gateway (the dependency points one way)."""
    assert not {m for m in imports("transmit_hub") if m.startswith("im_gateway")}


def test_the_gateway_never_touches_protobuf_classes() -> None:
    """Only transmit_hub.codec converts protobuf; im_gateway imports no *_pb2 module."""
    assert not {m for m in imports("im_gateway") if "pb2" in m}


def test_message_ids_are_unique_and_time_ordered() -> None:
    """Ids from two generators never collide; one generator's ids sort by creation."""
    one, two = MessageIds(), MessageIds()
    ids = [one.next(1_700_000_000_000 + i // 10)[0] for i in range(1000)]
    other = [two.next(1_700_000_000_000 + i // 10)[0] for i in range(1000)]
    assert len(set(ids) | set(other)) == 2000
    assert ids == sorted(ids)


def test_an_id_is_time_nonce_and_counter_whatever_came_before() -> None:
    """The time part is formatted once per millisecond: an id made after another
    millisecond's (earlier or later) still carries its own time."""
    gen = MessageIds()
    for i, ms in enumerate([5, 5, 7, 5, 2**48 - 1, 0, 0]):
        msg_id, at = gen.next(ms)
        assert at == ms
        assert msg_id[:12] == f"{ms:012x}"
        assert msg_id[24:] == f"{i + 1:06x}"
        assert len(msg_id) == 30


def test_exported_names() -> None:
    """The package exports the gateway, its config, the store interface and its errors."""
    import im_gateway

    assert sorted(im_gateway.__all__) == [
        "AuthError",
        "ConfigError",
        "FrameError",
        "Gateway",
        "GatewayConfig",
        "GatewayError",
        "LifecycleError",
        "StartupError",
        "Store",
    ]
    for name in im_gateway.__all__:
        assert getattr(im_gateway, name).__module__.startswith("im_gateway.")
    assert issubclass(im_gateway.StartupError, im_gateway.GatewayError)


def test_the_counter_is_six_hex_digits_at_every_width_and_wraps() -> None:
    """The counter part is always six lowercase hex digits (zero-padded), and wraps from
    ffffff to 000000."""
    gen = MessageIds()
    for start in (0, 0xE, 0xFE, 0xFFE, 0xFFFE, 0xFFFFE, 0xFFFFFE):
        gen._counter = start
        for expected in (start + 1, start + 2):
            msg_id, _ = gen.next(5)
            assert msg_id[24:] == f"{expected & 0xFFFFFF:06x}"
            assert len(msg_id) == 30
