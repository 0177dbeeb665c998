"""The Lua scripts as files (im_gateway.store.scripts) and the inbox entry (store.entry)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from im_gateway.store import entry, scripts
from transmit_hub.types import Message, MessageId, UserId

ROOT = Path(__file__).resolve().parents[3]
LUA = ROOT / "im_gateway" / "store" / "lua"
PARTS = {"now", "inbox", "group"}
"""Files that other scripts use, never sent alone."""


def test_every_script_file_is_loaded_and_every_constant_is_a_file() -> None:
    """Each lua/*.lua is a script the module loads, or a part a script uses; no script
    text lives in Python."""
    loaded = {name.lower() for name in vars(scripts) if name.isupper() and name[0] != "_"}
    files = {p.stem for p in LUA.glob("*.lua")}
    assert loaded | PARTS == files
    for name in loaded:
        assert getattr(scripts, name.upper()) == scripts.source(name)


def test_uses_puts_the_parts_first_in_order() -> None:
    """``-- uses: now, inbox`` prepends now.lua then inbox.lua; a script without the line
    is its file alone."""
    submit = scripts.source("submit")
    now, inbox = (LUA / "now.lua").read_text(), (LUA / "inbox.lua").read_text()
    group = (LUA / "group.lua").read_text()
    assert submit == now + inbox + group + (LUA / "submit.lua").read_text()
    assert (LUA / "ack.lua").read_text() == scripts.ACK
    for name in ("submit", "append", "refresh", "lookup"):
        text = scripts.source(name)
        assert text.count("local now =") == 1, name


def test_each_function_a_script_calls_is_defined_in_it() -> None:
    """A script that calls append_entry, age_trim or reads ``now`` gets them from its
    parts (a missing ``-- uses`` would fail only on a live Redis)."""
    for path in LUA.glob("*.lua"):
        if path.stem in PARTS:
            continue
        text = scripts.source(path.stem)
        for function in ("append_entry", "age_trim"):
            if re.search(rf"\b{function}\(", text):
                assert f"local function {function}(" in text, (path.stem, function)
        code = re.sub(r"--[^\n]*", "", (LUA / path.name).read_text())
        if re.search(r"\bnow\b", code):
            assert "local now =" in text, path.stem


def test_the_scripts_ship_with_the_package() -> None:
    """pyproject's package data includes lua/*.lua, so an installed gateway has them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]["im_gateway"]
    assert "store/lua/*.lua" in data


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_u64 = st.integers(0, 2**64 - 1)


@given(_text, _u64, _u64, st.sampled_from([1, 2]), st.integers(-(2**31), 2**31 - 1), _u64, _text)
def test_an_entry_reads_back_as_written(
    mid: str, sender: int, to: int, kind: int, content_type: int, time: int, content: str
) -> None:
    """decode(encode(m)) == m for any text and uint64 ids; encode writes strict JSON."""
    m = Message(MessageId(mid), UserId(sender), to, kind, content_type, time, content)
    blob = entry.encode(m)
    assert entry.decode(blob) == m
    assert entry.decode(blob.encode()) == m
    assert entry.from_fields({b"m": blob.encode()}) == m
    assert entry.from_fields({"m": blob}) == m


def test_an_entry_id_gives_its_position() -> None:
    """A stream entry id is ``<position>-<ms>``."""
    assert entry.position(b"17-1700000000000") == 17
    assert entry.position(f"{2**64 - 1}-5") == 2**64 - 1
