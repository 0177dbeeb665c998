"""The probe's settings come from the one mechanism too (``ProbeConfig`` and its
``Program``): ``--help``, ``IM_GATEWAY_PROBE_*``, ``--config FILE``, ``--print-config`` and
``--log-format json``, checked like the hub's and the gateway's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from im_gateway import probe_config as probe
from im_gateway.errors import ConfigError
from tests.end_to_end.harness import SECRET, GatewayProcess
from tests.helpers import wait_until
from tests.test_json_logs import records, start, stop
from tests.test_settings import help_entries, shown
from transmit_hub.server import HubServer
from transmit_hub.settings import options

PREFIX = "IM_GATEWAY_PROBE_"
GW = "ws://127.0.0.1:1/ws"
REQUIRED = {PREFIX + "JWT_SECRET": SECRET, PREFIX + "GATEWAY": GW}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "im_gateway", "probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "COLUMNS": "2000", **(env or {})},
        check=False,
    )


def test_help_lists_exactly_the_fields_with_their_defaults_and_variables() -> None:
    """Each ProbeConfig field is one flag with its default and IM_GATEWAY_PROBE_ variable;
    no other flag but --config and --print-config."""
    result = run("--help")
    assert result.returncode == 0, result.stderr
    entries = help_entries(result.stdout)
    fields = {option.flag: option for option in options(probe.ProbeConfig)}
    assert set(entries) == set(fields) | {"--config", "--print-config"}
    for flag, option in fields.items():
        assert f"[env {option.env(PREFIX)}]" in entries[flag], flag
        if option.default not in (None, ""):
            assert f"(default: {shown(option)})" in entries[flag], flag
    # The documented defaults (README, "The end-to-end probe").
    config = probe.ProbeConfig(gateway=GW, jwt_secret=SECRET)
    assert (config.user_base, config.interval, config.deadline) == (9 * 10**18, 5.0, 3.0)
    assert (config.summary_every, config.metrics_listen) == (60.0, None)


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path: Path) -> None:
    """file < environment < flag; the file may be named by IM_GATEWAY_PROBE_CONFIG; a
    repeated --gateway adds URLs, in order."""
    path = tmp_path / "probe.toml"
    path.write_text(
        f'gateway = "ws://file:1/ws"\njwt_secret = "{SECRET}"\n'
        "interval = 7\ndeadline = 2.5\nsummary_every = 30\n"
    )
    env = {PREFIX + "DEADLINE": "1.5", PREFIX + "SUMMARY_EVERY": "20"}
    loaded = probe.load(["--config", str(path), "--summary-every", "10"], env)
    config = loaded.config
    assert (config.interval, config.deadline, config.summary_every) == (7.0, 1.5, 10.0)
    assert config.gateways == ("ws://file:1/ws",)
    named = probe.load([], {PREFIX + "CONFIG": str(path)}).config
    assert named.interval == 7.0
    argv = ["--gateway", "ws://a:1/ws", "--gateway=ws://b:2/ws,ws://c:3/ws", "--gateway", GW]
    many = probe.load(argv, {PREFIX + "JWT_SECRET": SECRET}).config
    assert many.gateways == ("ws://a:1/ws", "ws://b:2/ws", "ws://c:3/ws", GW)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--gateway", "http://a:1/"], REQUIRED, "--gateway 'http://a:1/': expected ws://"),
        ([], {PREFIX + "GATEWAY": GW}, "--jwt-secret (or IM_GATEWAY_PROBE_JWT_SECRET)"),
        ([], {PREFIX + "JWT_SECRET": SECRET}, "give at least one --gateway URL"),
        (["--gateway", f"{GW},{GW}"], REQUIRED, "a --gateway is given twice"),
        (["--interval", "0"], REQUIRED, "--interval must be 0.1 to 3600, got 0.0"),
        (["--user-base", str(2**64 - 1)], REQUIRED, "--user-base must leave room"),
        (["--metrics-listen", "nowhere"], REQUIRED, "--metrics-listen"),
        ([], {**REQUIRED, PREFIX + "INTERVAL": "often"}, "IM_GATEWAY_PROBE_INTERVAL: 'often'"),
        (["--log-level", "LOUD"], REQUIRED, "--log-level must be one of DEBUG"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_it(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        probe.load(argv, env)
    assert message in str(info.value)
    assert SECRET not in str(info.value)


def test_a_bad_file_key_stops_the_process_with_one_line(tmp_path: Path) -> None:
    """Exit 2 and one line naming the unknown key and the closest one; in JSON when asked."""
    path = tmp_path / "probe.toml"
    path.write_text("intervall = 3\n")
    result = run("--config", str(path), env=REQUIRED)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"python -m im_gateway probe: error: --config {path}: unknown key 'intervall' "
        "(did you mean 'interval'?)"
    ]
    as_json = run("--config", str(path), "--log-format", "json", env=REQUIRED)
    assert as_json.returncode == 2
    (line,) = as_json.stderr.strip().splitlines()
    assert "unknown key 'intervall'" in json.loads(line)["message"]


def test_print_config_masks_the_secret(tmp_path: Path) -> None:
    result = run("--print-config", "--interval", "9", env=REQUIRED)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    printed = tomllib.loads(result.stdout)
    assert printed["jwt_secret"] == "***"
    assert (printed["gateway"], printed["interval"]) == (GW, 9.0)
    assert "# metrics_listen = (unset)" in result.stdout


async def test_the_probe_writes_only_json_from_start_to_stop(
    tmp_path: Path, hub: HubServer, redis_url: str
) -> None:
    """A probe with --log-format json against a real gateway: its start, its summaries and
    its stop are JSON records on stderr; stdout stays empty; SIGTERM exits 0."""
    gateway = GatewayProcess(gateway_id="gw-probe-json", hub=hub.address, redis_url=redis_url)
    try:
        await gateway.wait_healthy()
        argv = ["-m", "im_gateway", "probe", "--gateway", f"ws://127.0.0.1:{gateway.port}/ws"]
        argv += ["--interval", "0.2", "--summary-every", "1", "--log-format", "json"]
        proc, out, err = start(tmp_path, argv, env={PREFIX + "JWT_SECRET": SECRET})
        try:

            def summarised() -> bool:
                return " p50=" in err.read_text()

            await wait_until(summarised, timeout=20, what="a summary with deliveries")
        finally:
            code = await stop(proc)
        assert code == 0, err.read_text()
        assert out.read_text() == ""
        messages = [r["message"] for r in records(err)]
        assert any(m.startswith("probing 1 gateways") for m in messages), messages
        assert any(m.startswith("probe summary:") for m in messages), messages
        assert messages[-1] == "probe stopped", messages
    finally:
        gateway.stop()
