"""Both programs' settings come from one declaration: their config dataclass.

``--help``, the environment, ``--config FILE`` and ``--print-config`` of
``python -m transmit_hub`` and ``python -m im_gateway`` are checked against the fields of
``HubConfig`` and ``GatewayConfig``, with the same rules for both programs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import im_gateway.__main__ as gateway_main
from im_gateway.config import GatewayConfig
from im_gateway.errors import ConfigError as GatewayConfigError
from transmit_hub import config as hub_config
from transmit_hub.config import HubConfig
from transmit_hub.errors import ConfigError as HubConfigError
from transmit_hub.settings import Option, Program, options

SECRET = "settings-test-secret-settings-test-secret"


@dataclass(frozen=True)
class Case:
    module: str
    program: Program[Any]
    error: type[Exception]
    required: dict[str, str]
    """Environment a valid start needs (the gateway's JWT secret)."""


HUB = Case("transmit_hub", hub_config.PROGRAM, HubConfigError, {})
GATEWAY = Case(
    "im_gateway", gateway_main.PROGRAM, GatewayConfigError, {"IM_GATEWAY_JWT_SECRET": SECRET}
)
CASES = pytest.mark.parametrize("case", [HUB, GATEWAY], ids=["hub", "gateway"])


def run(
    case: Case, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(case.program.env_prefix)}
    return subprocess.run(
        [sys.executable, "-m", case.module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "COLUMNS": "2000", **(env or {})},
        check=False,
    )


def help_entries(text: str) -> dict[str, str]:
    """``--flag`` -> its help text, from argparse's ``--help`` output."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if m := re.match(r"^  (--[a-z0-9-]+)(?:, --no-[a-z0-9-]+)?(?: \S+)?(.*)$", line):
            current = entries[m[1]] = [m[2]]
        elif current is not None and line.startswith("    "):
            current.append(line)
        else:
            current = None
    return {flag: " ".join(" ".join(parts).split()) for flag, parts in entries.items()}


def shown(option: Option) -> str:
    value = option.default
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


@CASES
def test_help_lists_exactly_the_fields_with_their_defaults_and_variables(case: Case) -> None:
    """Each field is one flag in ``--help`` with its default and variable; no flag without a
    field (besides --config and --print-config); the epilog states the environment rule."""
    result = run(case, "--help")
    assert result.returncode == 0, result.stderr
    entries = help_entries(result.stdout)
    fields = {option.flag: option for option in options(case.program.config)}
    assert set(entries) == set(fields) | {"--config", "--print-config"}
    for flag, option in fields.items():
        text = entries[flag]
        assert f"[env {option.env(case.program.env_prefix)}]" in text, flag
        if option.default in (None, ""):
            assert "(default: None)" not in text, flag
            assert "(default: )" not in text, flag
        else:
            assert f"(default: {shown(option)})" in text, flag
    assert "an empty variable counts as unset" in " ".join(result.stdout.split())


def test_the_defaults_are_the_pinned_ones() -> None:
    """The generated flags keep the pinned defaults (DESIGN.md, processes and flags)."""
    assert HubConfig().listen == "127.0.0.1:50051"
    gateway = GatewayConfig(jwt_secret=SECRET)
    assert (gateway.listen, gateway.hub) == ("127.0.0.1:8080", "127.0.0.1:50051")
    assert gateway.redis_url == "redis://127.0.0.1:6379/0"
    assert (HubConfig().log_format, gateway.log_format) == ("text", "text")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return str(path)


PRECEDENCE = {
    # field -> (file, environment, flag); each later source wins over the earlier ones
    "transmit_hub": ("queue_size", "grace", "max_gateways", "hello_timeout"),
    "im_gateway": ("send_queue", "rate_limit", "max_group_members", "idle_timeout"),
}


@CASES
def test_flags_win_over_the_environment_which_wins_over_the_file(
    case: Case, tmp_path: Path
) -> None:
    """Precedence with all three sources at once: flag > environment > file > default."""
    file_only, file_env, all_three, untouched = PRECEDENCE[case.module]
    path = write(tmp_path, f"{file_only} = 2000\n{file_env} = 3000\n{all_three} = 4000\n")
    prefix = case.program.env_prefix
    env = {
        **case.required,
        prefix + file_env.upper(): "30",
        prefix + all_three.upper(): "40",
    }
    flag = "--" + all_three.replace("_", "-")
    config = case.program.load(["--config", path, flag, "50"], env).config
    assert getattr(config, file_only) == 2000
    assert getattr(config, file_env) == 30
    assert getattr(config, all_three) == 50
    default = next(o.default for o in options(case.program.config) if o.name == untouched)
    assert getattr(config, untouched) == default
    # The file may also be named by the environment.
    named = case.program.load([], {**case.required, prefix + "CONFIG": path}).config
    assert getattr(named, file_only) == 2000


@CASES
def test_an_empty_variable_counts_as_unset(case: Case, tmp_path: Path) -> None:
    """Both programs: ``PREFIX_X=`` is no variable (the file's or the default value holds),
    even for a number or a boolean, where an empty text is no value."""
    first_int = next(o for o in options(case.program.config) if o.kind is int)
    path = write(tmp_path, f"{first_int.name} = 77\n")
    prefix = case.program.env_prefix
    env = {
        **case.required,
        **{o.env(prefix): "" for o in options(case.program.config) if o.name != "jwt_secret"},
    }
    config = case.program.load(["--config", path], env).config
    assert getattr(config, first_int.name) == 77
    assert config == case.program.load(["--config", path], case.required).config


@CASES
def test_an_unknown_key_is_one_line_naming_it_and_the_closest(case: Case, tmp_path: Path) -> None:
    """A misspelt key stops the program (exit 2, one line) naming the key and a suggestion."""
    path = write(tmp_path, 'log_levle = "DEBUG"\n')
    result = run(case, "--config", path, env=case.required)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "unknown key 'log_levle'" in lines[0]
    assert "did you mean 'log_level'" in lines[0]
    with pytest.raises(case.error, match=r"unknown key 'nothing_like_it'$"):
        case.program.load(["--config", write(tmp_path, "nothing_like_it = 1\n")], case.required)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('grace = "fast"', "grace must be a number, got a string"),
        ("queue_size = 1.5", "queue_size must be an integer, got a number"),
        ("queue_size = true", "queue_size must be an integer, got a boolean"),
        ("listen = 8080", "listen must be a string, got an integer"),
        ("[listen]\nhost = 1", "listen must be a string, got a dict"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_and_the_type(
    tmp_path: Path, text: str, message: str
) -> None:
    """A file value of the wrong TOML type is refused, naming the key and the type wanted."""
    with pytest.raises(HubConfigError, match=re.escape(message)):
        HUB.program.load(["--config", write(tmp_path, text + "\n")], {})


def test_gateway_file_types_and_a_bad_file(tmp_path: Path) -> None:
    """The gateway's booleans and numbers from a file; an integer for a float is fine; a
    broken or missing file is one clear error."""
    path = write(tmp_path, f'jwt_secret = "{SECRET}"\ncompression = true\nrate_limit = 5\n')
    config = GATEWAY.program.load(["--config", path], {}).config
    assert (config.compression, config.rate_limit) == (True, 5.0)
    with pytest.raises(GatewayConfigError, match="compression must be a boolean"):
        GATEWAY.program.load(["--config", write(tmp_path, 'compression = "yes"\n')], {})
    with pytest.raises(GatewayConfigError, match="not valid TOML"):
        GATEWAY.program.load(["--config", write(tmp_path, "rate_limit = \n")], {})
    with pytest.raises(GatewayConfigError, match="cannot read it"):
        GATEWAY.program.load(["--config", str(tmp_path / "missing.toml")], {})


def test_bad_file_value_is_one_line_from_the_hub_process(tmp_path: Path) -> None:
    """The hub process stops with exit 2 and one line naming the key and the type."""
    result = run(HUB, "--config", write(tmp_path, 'queue_size = "many"\n'))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"transmit_hub: error: --config {tmp_path / 'settings.toml'}: queue_size must be "
        "an integer, got a string"
    ]


def hostile_config(tmp_path: Path, kind: str) -> str:
    """A config file path that is not a small UTF-8 TOML file, of one ``kind``."""
    path = tmp_path / f"{kind}.toml"
    if kind == "fifo":
        os.mkfifo(path)  # no writer: open() and read() would wait forever
    elif kind == "not-utf8":
        path.write_bytes(b'log_level = "\xff\xfe"\n')
    elif kind == "deep":
        path.write_text("x = " + "[" * 5000 + "1" + "]" * 5000 + "\n")
    elif kind == "huge":
        path.write_text("# padding\n" * 200_000)  # 2 MB of comments
    elif kind == "device":
        return "/dev/zero"  # endless bytes
    return str(path)


@CASES
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("fifo", "not a regular file"),
        ("device", "not a regular file"),
        ("not-utf8", "not UTF-8"),
        ("deep", "nested too deeply"),
        ("huge", "larger than 1 MiB"),
    ],
)
def test_a_hostile_config_file_is_one_line_at_once(
    case: Case, tmp_path: Path, kind: str, message: str
) -> None:
    """A FIFO, a device, a file that is not UTF-8, nested too deeply or too large: the
    program stops at once (exit 2) with one line naming --config and the problem; no hang,
    no traceback, no unbounded read."""
    path = hostile_config(tmp_path, kind)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(case.program.env_prefix)}
    result = subprocess.run(
        [sys.executable, "-m", case.module, "--config", path],
        capture_output=True,
        text=True,
        timeout=20,
        env={**clean, **case.required},
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert f"--config {path}: " in lines[0]
    assert message in lines[0]


SECRETS = {
    "transmit_hub": {"auth_token": "hub-auth-token-value-0001"},
    "im_gateway": {
        "jwt_secret": "gateway-jwt-secret-value-0002-0002",
        "hub_token": "gateway-hub-token-value-0003",
        "api_key": "gateway-api-key-value-0004",
    },
}


@CASES
def test_print_config_shows_every_setting_with_secrets_masked(case: Case, tmp_path: Path) -> None:
    """--print-config exits 0 with TOML of the effective settings (file, environment and
    flag merged); no secret appears, not even a Redis password."""
    secrets = SECRETS[case.module]
    lines = [f'{key} = "{value}"' for key, value in secrets.items()]
    extra: list[str] = []
    if case is GATEWAY:
        lines.append('api_listen = "127.0.0.1:0"')
        lines.append('redis_url = "redis://app:redis-password-0005@10.0.0.5:6379/0"')
        extra = ["--rate-limit", "7"]
    path = write(tmp_path, "\n".join(lines) + "\n")
    prefix = case.program.env_prefix
    result = run(
        case, "--config", path, "--print-config", *extra, env={prefix + "LOG_LEVEL": "debug"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for value in [*secrets.values(), "redis-password-0005"]:
        assert value not in result.stdout
    printed = tomllib.loads(result.stdout)
    for key in secrets:
        assert printed[key] == "***"
    assert printed["log_level"] == "debug"
    effective = case.program.load(["--config", path, *extra], {prefix + "LOG_LEVEL": "debug"})
    for option in options(case.program.config):
        value = getattr(effective.config, option.name)
        if option.name in secrets or option.name == "redis_url":
            continue
        if value is None:
            assert f"# {option.name} = (unset)" in result.stdout
        else:
            assert printed[option.name] == value, option.name
    if case is GATEWAY:
        assert printed["redis_url"] == "redis://app:***@10.0.0.5:6379/0"
        assert printed["rate_limit"] == 7.0


def test_errors_never_show_a_secret() -> None:
    """A secret that fails its check, or a secret variable that does not parse, is named by
    its flag and its value is left out of the message."""
    with pytest.raises(GatewayConfigError, match="--api-key must be at least 16") as info:
        GatewayConfig(jwt_secret=SECRET, api_listen="127.0.0.1:0", api_key="short-key")
    assert "short-key" not in str(info.value)
    with pytest.raises(HubConfigError, match="--auth-token must not be empty") as hub_info:
        HubConfig(auth_token="   ")
    assert "'   '" not in str(hub_info.value)


@CASES
def test_a_bad_variable_is_one_line_naming_it(case: Case) -> None:
    """A variable that is not the field's type: exit 2, one line naming the variable."""
    prefix = case.program.env_prefix
    name = prefix + ("QUEUE_SIZE" if case is HUB else "RATE_LIMIT")
    result = run(case, env={**case.required, name: "lots"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "'lots'" in lines[0]


def test_a_field_without_setting_is_refused() -> None:
    """The mechanism refuses a config field declared without setting(): no flag, no
    variable and no file key would exist for it."""
    from dataclasses import dataclass as plain

    @plain(frozen=True)
    class Broken:
        name: str = "x"

    with pytest.raises(TypeError, match=r"Broken\.name is not declared with setting"):
        options(Broken)


def test_the_library_takes_the_typed_config() -> None:
    """HubServer and Gateway take their config as it is (no loose keyword options)."""
    import inspect

    from im_gateway.gateway import Gateway
    from transmit_hub.server import HubServer

    for cls, config in ((HubServer, HubConfig), (Gateway, GatewayConfig)):
        parameters = inspect.signature(cls.__init__).parameters
        assert parameters["config"].annotation in (config.__name__, f"{config.__name__} | None")
        assert all(p.kind is not p.VAR_KEYWORD for p in parameters.values())
