"""The import graph of the runtime packages: no cycles, and the store's one-way seam."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, anywhere in its text (functions and
    ``TYPE_CHECKING`` blocks too): ``from . import x`` counts as importing ``x``."""
    paths = {
        module_name(p): p for p in (ROOT / package).rglob("*.py") if "/v1/" not in p.as_posix()
    }
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in paths)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in paths:
                        found.add(sub)
                    elif base in paths:
                        found.add(base)
        found.discard(name)
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check below can fail: a -> b -> c -> a is found, a tree is not."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("package", ["im_gateway", "transmit_hub"])
def test_no_import_cycles(package: str) -> None:
    """No module of the package imports, directly or not, a module that imports it back
    (the Redis store and its cluster subclass used to)."""
    graph = import_graph(package)
    assert len(graph) > 10  # the walk found the modules
    assert cycles(graph) == []


def test_the_store_depends_only_on_its_own_words() -> None:
    """The store package imports nothing of the gateway but its errors, positions and
    counted logging: not the wire's frames, not the pipeline or the sessions that word its
    answers."""
    graph = import_graph("im_gateway")
    outside = {
        dep
        for module, deps in graph.items()
        if module.startswith("im_gateway.store")
        for dep in deps
        if not dep.startswith("im_gateway.store")
    }
    assert outside == {"im_gateway.errors", "im_gateway.positions", "im_gateway.throttle"}


def test_the_pure_modules_do_not_import_the_store() -> None:
    """Frames, inbound checks, positions and API requests parse positions without the store."""
    graph = import_graph("im_gateway")
    for module in ("frames", "inbound", "positions", "api_requests", "cursor"):
        deps = graph[f"im_gateway.{module}"]
        assert not {d for d in deps if d.startswith("im_gateway.store")}, module


def test_the_store_modules_import_no_private_names() -> None:
    """The store's modules share public names only (no ``from .redis import _x``)."""
    for path in (ROOT / "im_gateway" / "store").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private}"


def test_the_store_package_exports_its_seam() -> None:
    """``im_gateway.store`` exports the protocol, its types, the three stores and
    open_store; each is defined inside the package."""
    import im_gateway.store

    assert sorted(im_gateway.store.__all__) == [
        "Accepted",
        "Beacon",
        "ClusterStore",
        "GroupPost",
        "GroupStream",
        "InboxEntry",
        "InboxPage",
        "Joined",
        "Membership",
        "MemoryStore",
        "Opening",
        "RedisStore",
        "Refusal",
        "Refused",
        "Store",
        "Submission",
        "Unread",
        "open_store",
    ]
    for name in im_gateway.store.__all__:
        assert getattr(im_gateway.store, name).__module__.startswith("im_gateway.store")
