"""The package's public names, and its independence from im_gateway."""

from __future__ import annotations

from pathlib import Path

import transmit_hub

EXPECTED = {
    "MESSAGE_GROUP",
    "MESSAGE_PRIVATE",
    "ConfigError",
    "Delivered",
    "Delivery",
    "GatewayId",
    "GatewayInfo",
    "GatewayStats",
    "HubLink",
    "HubPool",
    "HubServer",
    "HubStats",
    "LifecycleError",
    "LinkClosed",
    "LinkDown",
    "LinkError",
    "LinkEvent",
    "LinkLost",
    "LinkUp",
    "Message",
    "MessageId",
    "NotDelivered",
    "ProtocolError",
    "Recipient",
    "TransmitHubError",
    "TransmitMap",
    "Undeliverable",
    "UndeliverableReason",
    "UserId",
}


def test_exported_names() -> None:
    """transmit_hub exports exactly the documented public names, and each one exists."""
    assert set(transmit_hub.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(transmit_hub, name) is not None


def test_transmit_hub_never_imports_im_gateway() -> None:
    """The hub owns both ends of its protocol: no module of it imports im_gateway."""
    root = Path(transmit_hub.__file__).parent
    offenders = [
        p.name for p in root.rglob("*.py") if "im_gateway" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_only_codec_imports_generated_messages() -> None:
    """transmit_pb2 (protobuf data classes) is imported by codec.py alone."""
    root = Path(transmit_hub.__file__).parent
    users = sorted(
        p.name
        for p in root.glob("*.py")
        if "transmit_pb2 " in p.read_text(encoding="utf-8")
        or "import transmit_pb2\n" in p.read_text(encoding="utf-8")
    )
    assert users == ["codec.py"]
