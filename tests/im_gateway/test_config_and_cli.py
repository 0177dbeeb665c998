"""Config validation and flag/environment parsing (no process started)."""

from __future__ import annotations

import pytest

from im_gateway.__main__ import parse_config
from im_gateway.config import GatewayConfig, default_gateway_id, parse_host_port
from im_gateway.errors import ConfigError

SECRET = "config-test-secret-config-test-secret"


def test_defaults_match_the_pinned_flags() -> None:
    """Pinned defaults: listen 127.0.0.1:8080, hub :50051, redis db 0, 64 KiB frames."""
    cfg = parse_config(["--jwt-secret", SECRET], environ={})
    assert cfg.listen == "127.0.0.1:8080"
    assert cfg.hub == "127.0.0.1:50051"
    assert cfg.redis_url == "redis://127.0.0.1:6379/0"
    assert cfg.max_frame_size == 64 * 1024
    assert cfg.gateway_id is None
    assert cfg.compression is False
    assert (cfg.redis_wait_replicas, cfg.redis_wait_timeout) == (0, 1.0)


def test_environment_fills_in_and_flags_win() -> None:
    """IM_GATEWAY_* variables are used unless the flag is given."""
    env = {
        "IM_GATEWAY_JWT_SECRET": SECRET,
        "IM_GATEWAY_LISTEN": "0.0.0.0:9000",
        "IM_GATEWAY_HUB_TOKEN": "t0k",
        "IM_GATEWAY_RATE_LIMIT": "5",
        "IM_GATEWAY_COMPRESSION": "true",
    }
    cfg = parse_config(["--listen", "127.0.0.1:9001"], environ=env)
    assert cfg.jwt_secret == SECRET
    assert cfg.listen == "127.0.0.1:9001"
    assert cfg.hub_token == "t0k"
    assert cfg.rate_limit == 5.0
    assert cfg.compression is True
    assert parse_config(["--no-compression"], environ=env).compression is False


def test_trust_boundary_defaults_and_environment() -> None:
    """Pinned defaults: --group-join server, 100 connections per user, tokens at most a
    day; the new flags come from the environment too."""
    cfg = parse_config(["--jwt-secret", SECRET], environ={})
    assert cfg.group_join == "server"
    assert cfg.max_connections_per_user == 100
    assert cfg.max_connections == 50_000
    assert cfg.jwt_max_ttl == 86400
    assert (cfg.max_groups_per_user, cfg.max_group_members) == (1000, 100_000)
    assert (cfg.jwt_audience, cfg.jwt_issuer, cfg.tls_cert, cfg.tls_key) == (None,) * 4
    env = {
        "IM_GATEWAY_JWT_SECRET": SECRET,
        "IM_GATEWAY_GROUP_JOIN": "token",
        "IM_GATEWAY_JWT_MAX_TTL": "0",
        "IM_GATEWAY_TLS_CERT": "c.pem",
        "IM_GATEWAY_TLS_KEY": "k.pem",
    }
    cfg = parse_config(["--max-connections-per-user", "3"], environ=env)
    assert (cfg.group_join, cfg.jwt_max_ttl, cfg.tls) == ("token", 0, True)
    assert cfg.max_connections_per_user == 3


def test_bad_group_join_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --group-join is a usage error with one line naming the choices."""
    with pytest.raises(SystemExit) as info:
        parse_config(["--jwt-secret", SECRET, "--group-join", "anyone"], environ={})
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "server" in err[0]


def test_bad_environment_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed number in the environment is a usage error with one line."""
    with pytest.raises(SystemExit) as info:
        parse_config([], environ={"IM_GATEWAY_JWT_SECRET": SECRET, "IM_GATEWAY_RATE_LIMIT": "x"})
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"listen": "8080"},
        {"listen": "host:99999"},
        {"hub": "nohost"},
        {"jwt_secret": ""},
        {"gateway_id": " "},
        {"redis_url": "localhost"},
        {"max_frame_size": 100},
        {"max_content": 10**9},
        {"send_queue": 10, "replay_page": 8},
        {"rate_limit": -1},
        {"presence_ttl": 0},
        {"log_level": "LOUD"},
        {"replay_budget": -1},
        {"replay_budget": 100, "replay_page": 200},
        {"max_refused": -1},
        {"fill_delay": -0.1},
        {"ack_linger": -0.01},
        {"ack_linger": 5},
        {"redis_timeout": 0},
        {"store_wait": 0},
        {"store_wait": -1},
        {"redis_wait_replicas": -1},
        {"redis_wait_timeout": 0},
        {"redis_prefix": "im{x}:"},
        {"group_join": "anyone"},
        {"max_groups_per_user": 0},
        {"max_group_members": 0},
        {"max_connections_per_user": 0},
        {"max_connections": 10, "max_connections_per_user": 11},
        {"listen_backlog": 0},
        {"jwt_max_ttl": -1},
        {"jwt_audience": ""},
        {"tls_cert": "cert.pem"},
        {"tls_key": "key.pem"},
        {"drain_timeout": 0},
        {"drain_timeout": 4000},
        {"handshake_timeout": 0},
        {"handshake_timeout": -1},
        {"handshake_timeout": 301},
        {"handshake_timeout": float("nan")},
    ],
)
def test_invalid_settings_raise_config_error(changes: dict[str, object]) -> None:
    """Every invalid setting is refused with a ConfigError naming the flag."""
    with pytest.raises(ConfigError, match="--"):
        GatewayConfig(**{"jwt_secret": SECRET, **changes})  # type: ignore[arg-type]


def test_host_port_and_gateway_id_helpers() -> None:
    """HOST:PORT parsing handles IPv6; the default gateway id is stable per host and port."""
    assert parse_host_port("[::1]:80", "--listen") == ("::1", 80)
    assert parse_host_port("example.org:0", "--listen") == ("example.org", 0)
    assert default_gateway_id("10.0.0.5", 8080) == "gw-10.0.0.5-8080"
    assert default_gateway_id("0.0.0.0", 8080) == default_gateway_id("127.0.0.1", 8080)
    assert default_gateway_id("0.0.0.0", 8080) != default_gateway_id("0.0.0.0", 8081)


def test_position_flags_parse() -> None:
    """--replay-budget, --max-refused, --fill-delay and --redis-timeout reach the config;
    0 turns the budget and the refusal limit off."""
    defaults = parse_config(["--jwt-secret", SECRET], environ={})
    assert (defaults.replay_budget, defaults.max_refused, defaults.fill_delay) == (
        20_000,
        100,
        0.05,
    )
    assert defaults.redis_timeout == 5.0
    cfg = parse_config(
        [
            "--jwt-secret",
            SECRET,
            "--replay-budget",
            "0",
            "--max-refused",
            "0",
            "--fill-delay",
            "0.2",
            "--redis-timeout",
            "1.5",
        ],
        environ={},
    )
    assert (cfg.replay_budget, cfg.max_refused, cfg.fill_delay, cfg.redis_timeout) == (
        0,
        0,
        0.2,
        1.5,
    )


def test_probe_flags_are_checked() -> None:
    """The probe refuses a non-WebSocket URL, no secret, a user range past 2^64 and a bad
    interval, each naming its flag; the environment fills in what flags leave unset."""
    from im_gateway import probe_config as probe

    env = {"IM_GATEWAY_PROBE_JWT_SECRET": SECRET}
    config = probe.parse_config(["--gateway", "ws://a:1/ws,ws://b:2/ws"], env)
    assert config.gateways == ("ws://a:1/ws", "ws://b:2/ws")
    assert config.jwt_secret == SECRET
    assert config.log_level == "INFO"
    for argv, env_ in (
        (["--gateway", "http://a:1/"], env),
        (["--gateway", "ws://a:1/ws"], {}),
        (["--gateway", "ws://a:1/ws", "--user-base", str(2**64 - 1)], env),
        (["--gateway", "ws://a:1/ws", "--interval", "0"], env),
        (["--gateway", "ws://a:1/ws", "--metrics-listen", "nowhere"], env),
    ):
        with pytest.raises(SystemExit) as info:
            probe.parse_config(argv, env_)
        assert info.value.code == 2


def test_handshake_timeout_is_a_flag_with_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--handshake-timeout (default 10 s, websockets' open timeout until it was a flag)
    parses; 0 is a usage error in one line that names the flag and the range."""
    assert GatewayConfig(jwt_secret=SECRET).handshake_timeout == 10.0
    cfg = parse_config(["--jwt-secret", SECRET, "--handshake-timeout", "2.5"], environ={})
    assert cfg.handshake_timeout == 2.5
    with pytest.raises(SystemExit) as info:
        parse_config(["--jwt-secret", SECRET, "--handshake-timeout", "0"], environ={})
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--handshake-timeout" in line, line
    assert "0.1 to 300" in line, line
