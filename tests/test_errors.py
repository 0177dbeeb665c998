"""Each runtime package raises its own exceptions (one root, drawn in errors.py), and the
gateway's WebSocket close codes are named once."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

import im_gateway
import im_gateway.errors
import transmit_hub
import transmit_hub.errors
from im_gateway.admission import ConnectionCaps
from im_gateway.config import GatewayConfig
from im_gateway.gateway import Gateway
from im_gateway.group_policy import GroupRights
from transmit_hub.auth import BearerTokenInterceptor
from transmit_hub.config import HubConfig
from transmit_hub.link import HubLink
from transmit_hub.outbox import Outbox
from transmit_hub.registry import Registry
from transmit_hub.server import HubServer
from transmit_hub.types import GatewayId

ROOT = Path(__file__).resolve().parents[1]

BUILTIN_RAISES = {"ValueError", "RuntimeError", "TypeError", "Exception", "KeyError"}
ALLOWED_BUILTIN_RAISES = {
    # The text -> value converters of the declared settings: the parser turns their
    # ValueError/TypeError into a ConfigError naming the flag; a TypeError at import time is
    # a setting declared wrongly in the code itself.
    "transmit_hub/settings.py",
    # The encoder's integer out of 64 bits: caught where the link encodes (the map is
    # refused with a log line), never seen by a caller.
    "transmit_hub/wire.py",
    # The client library: what the gateway answers is its own ClientError tree; a caller's
    # wrong argument (a user id out of range, content not a str) is ValueError/TypeError,
    # the Python convention for a library's callers.
    "im_gateway/client.py",
    # Its argument checks (a group id out of range), shared with client.py.
    "im_gateway/client_protocol.py",
}


def builtin_raises(path: Path) -> list[str]:
    """``raise ValueError(...)`` and the like in ``path``: each as ``NAME:LINE``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in BUILTIN_RAISES:
                found.append(f"{exc.id}:{node.lineno}")
    return found


def test_runtime_modules_raise_their_package_exceptions() -> None:
    """No module of im_gateway or transmit_hub raises a bare ValueError, RuntimeError or
    TypeError for its callers to catch (link, registry, outbox, auth, admission,
    group_policy and both servers did)."""
    offenders = {}
    for package in ("im_gateway", "transmit_hub"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if "/v1/" in name or name in ALLOWED_BUILTIN_RAISES:
                continue
            if raises := builtin_raises(path):
                offenders[name] = raises
    assert offenders == {}


def test_the_raise_check_finds_a_bare_value_error(tmp_path: Path) -> None:
    """The check above can fail: ``raise ValueError(...)`` and ``raise RuntimeError`` are found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    raise ValueError('x')\n\ndef g():\n    raise RuntimeError\n")
    assert builtin_raises(module) == ["ValueError:2", "RuntimeError:5"]


@pytest.mark.parametrize(
    ("package", "module", "root"),
    [
        (im_gateway, im_gateway.errors, im_gateway.errors.GatewayError),
        (transmit_hub, transmit_hub.errors, transmit_hub.errors.TransmitHubError),
    ],
)
def test_the_drawn_tree_is_the_real_one(
    package: ModuleType, module: ModuleType, root: type[Exception]
) -> None:
    """errors.py's docstring draws every exception class of the module, each under its real
    parent, and every one derives from the package's root."""
    classes = {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    }
    doc = module.__doc__ or ""
    drawn: dict[str, str | None] = {}
    parents: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*)(?:[│ ]*)(?:[├└]── )?([A-Z]\w+)(?:\s|$)", line)
        if match is None or match.group(2) not in classes:
            continue
        name = match.group(2)
        depth = line.index(name)
        while parents and parents[-1][0] >= depth:
            parents.pop()
        drawn[name] = parents[-1][1] if parents else None
        parents.append((depth, name))
    assert set(drawn) == set(classes), "the tree in the docstring and the classes differ"
    for name, parent in drawn.items():
        cls = classes[name]
        assert issubclass(cls, root)
        if parent is not None:
            assert classes[parent] in cls.__bases__, f"{name} is drawn under {parent}"
    for name in classes:
        assert getattr(package, name, classes[name]) is classes[name]


def _hub_link_with_bad_linger() -> object:
    return HubLink("127.0.0.1:1", GatewayId("gw-a"), linger=2.0)


@pytest.mark.parametrize(
    ("make", "root"),
    [
        (lambda: Outbox(0), transmit_hub.TransmitHubError),
        (lambda: Registry("hub", 8, max_gateways=0), transmit_hub.TransmitHubError),
        (_hub_link_with_bad_linger, transmit_hub.TransmitHubError),
        (lambda: HubLink("127.0.0.1:1", GatewayId("")), transmit_hub.TransmitHubError),
        (lambda: BearerTokenInterceptor(""), transmit_hub.TransmitHubError),
        (lambda: BearerTokenInterceptor("t", max_waiting=-1), transmit_hub.TransmitHubError),
        (lambda: ConnectionCaps(per_user=0, total=1), im_gateway.GatewayError),
        (lambda: GroupRights("anyone"), im_gateway.GatewayError),
    ],
    ids=[
        "outbox",
        "registry",
        "link-linger",
        "link-id",
        "hub-token",
        "hub-token-waiting",
        "caps",
        "group-policy",
    ],
)
def test_bad_constructor_arguments_raise_the_package_config_error(
    make: Callable[[], object], root: type[Exception]
) -> None:
    """A wrong argument is the package's ConfigError (under its root), not a ValueError a
    caller catching the package's root would miss."""
    with pytest.raises(root) as info:
        make()
    assert type(info.value).__name__ == "ConfigError"
    assert not isinstance(info.value, ValueError)


def test_a_hub_used_before_start_says_so() -> None:
    """The port of a hub not started is a LifecycleError (was a RuntimeError)."""
    hub = HubServer(HubConfig(listen="127.0.0.1:0"))
    with pytest.raises(transmit_hub.LifecycleError, match="not started"):
        _ = hub.port


def test_a_gateway_used_before_start_says_so() -> None:
    """The store, fan-out, pipeline and id of a gateway not started are a LifecycleError."""
    gateway = Gateway(GatewayConfig(listen="127.0.0.1:0", jwt_secret="x" * 32))
    reads = (
        lambda: gateway.store,
        lambda: gateway.fanout,
        lambda: gateway.pipeline,
        lambda: gateway.gateway_id,
    )
    for read in reads:
        with pytest.raises(im_gateway.LifecycleError):
            read()


# ---- close codes ------------------------------------------------------------------------

CLOSING_CALLS = {"close", "close_socket", "disconnect"}


def literal_close_codes(path: Path) -> list[str]:
    """Close codes written as numbers: ``close(1011, ...)`` calls and ``CLOSE_X = 1008``
    assignments, each as ``LINE:CODE``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOSING_CALLS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, int)
        ):
            found.append(f"{node.lineno}:{node.args[0].value}")
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            if (
                any(isinstance(t, ast.Name) and t.id.startswith("CLOSE_") for t in targets)
                and isinstance(value, ast.Constant)
                and isinstance(value.value, int)
            ):
                found.append(f"{node.lineno}:{value.value}")
    return found


def test_close_codes_are_named_in_one_module() -> None:
    """Outside im_gateway/close_codes.py no module closes a socket with a number or defines
    a CLOSE_ constant (4001 was defined twice, 1011 and 1001 written as numbers)."""
    offenders = {
        str(path.relative_to(ROOT)): codes
        for path in sorted((ROOT / "im_gateway").rglob("*.py"))
        if path.name != "close_codes.py" and (codes := literal_close_codes(path))
    }
    assert offenders == {}
    from im_gateway import close_codes

    named = {k: v for k, v in vars(close_codes).items() if k.startswith("CLOSE_")}
    assert len(set(named.values())) == len(named), "two names for one code"
    assert set(named.values()) >= {1000, 1001, 1008, 1009, 1011, 1012, 1013, 4001}


def test_the_close_code_check_finds_numbers(tmp_path: Path) -> None:
    """The check above can fail: a numeric close and a CLOSE_ constant are found."""
    module = tmp_path / "m.py"
    module.write_text("CLOSE_X = 4001\nasync def f(s):\n    await s.close(1011, 'x')\n")
    assert literal_close_codes(module) == ["1:4001", "3:1011"]
