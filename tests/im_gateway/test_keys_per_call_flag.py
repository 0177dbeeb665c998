"""--redis-keys-per-call: declared once, checked, documented in --help and the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from im_gateway.__main__ import parse_config
from im_gateway.config import GatewayConfig
from im_gateway.errors import ConfigError

SECRET = "k" * 32
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("bad", [0, -1, -256])
def test_zero_or_negative_is_refused_naming_the_flag(bad: int) -> None:
    """0 and negative counts are refused with a ConfigError naming the flag."""
    with pytest.raises(ConfigError, match=r"--redis-keys-per-call.*at least 1"):
        GatewayConfig(jwt_secret=SECRET, redis_keys_per_call=bad)


def test_the_command_line_refuses_zero_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``--redis-keys-per-call 0`` exits 2 with one line that names the flag."""
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--jwt-secret", SECRET, "--redis-keys-per-call", "0"], environ={})
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--redis-keys-per-call" in err
    assert len(err.splitlines()) == 1, err


def test_default_flag_and_environment() -> None:
    """256 by default; the flag and IM_GATEWAY_REDIS_KEYS_PER_CALL set it, the flag wins."""
    assert parse_config(["--jwt-secret", SECRET], environ={}).redis_keys_per_call == 256
    env = {"IM_GATEWAY_REDIS_KEYS_PER_CALL": "9"}
    assert parse_config(["--jwt-secret", SECRET], environ=env).redis_keys_per_call == 9
    argv = ["--jwt-secret", SECRET, "--redis-keys-per-call", "64"]
    assert parse_config(argv, environ=env).redis_keys_per_call == 64


def test_help_and_readme_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    """--help and the README's flag table list the flag, its default, and why it exists
    (a call holds Redis about 7 µs a key, every other client waiting)."""
    with pytest.raises(SystemExit):
        parse_config(["--help"], environ={})
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--redis-keys-per-call KEYS" in help_text
    assert "every other client waits, for about 7 µs a key" in help_text
    rows = [
        line for line in README.read_text().splitlines() if "`--redis-keys-per-call KEYS`" in line
    ]
    assert len(rows) == 1
    assert "| 256 |" in rows[0]
    assert "every other client waits" in rows[0]
