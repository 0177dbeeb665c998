"""``--workers``' pure parts: the restart policy, the workers' command lines, the exit
code, and the settings' checks (no process started; the processes are in
``tests/end_to_end/test_workers.py``)."""

from __future__ import annotations

import signal
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from im_gateway.__main__ import load
from im_gateway.config import GatewayConfig
from im_gateway.errors import ConfigError
from im_gateway.workers import (
    EXIT_OK,
    EXIT_UNCLEAN,
    FIRST_BEAT,
    Plan,
    Restarts,
    describe_exit,
    exit_code,
    silent_for,
    worker_argv,
)

SECRET = "workers-test-secret-workers-test-secret"


def config(**changes: object) -> GatewayConfig:
    return GatewayConfig(jwt_secret=SECRET).replace(**changes)


def test_restart_pauses_double_up_to_the_cap_then_give_up() -> None:
    """Exits within a minute: 0.2 s, 0.4 s, 0.8 s ... up to --worker-restarts; one more
    gives up."""
    restarts = Restarts(4)
    assert [restarts.exited(t) for t in (0, 1, 2, 3)] == [0.2, 0.4, 0.8, 1.6]
    assert restarts.exited(4) is None
    assert restarts.total == 4


def test_exits_older_than_the_window_do_not_count() -> None:
    """A worker that dies once in a while is restarted forever, each time at once-ish."""
    restarts = Restarts(2)
    pauses = [restarts.exited(t * 61.0) for t in range(100)]
    assert pauses == [0.2] * 100
    assert restarts.total == 100


def test_the_pause_is_bounded() -> None:
    """However many exits the cap allows, no pause exceeds 10 s."""
    restarts = Restarts(50)
    pauses = [restarts.exited(t * 0.01) for t in range(50)]
    assert max(p for p in pauses if p is not None) == 10.0


def test_cap_zero_never_restarts() -> None:
    """--worker-restarts 0: the first exit gives up."""
    assert Restarts(0).exited(0.0) is None


@given(
    cap=st.integers(0, 20),
    gaps=st.lists(st.floats(0, 120, allow_nan=False), min_size=1, max_size=60),
)
def test_never_more_than_cap_restarts_in_any_minute(cap: int, gaps: list[float]) -> None:
    """Whatever the exit times, restarts decided within any 60 s never exceed the cap,
    and the policy gives up exactly when an exit would make one more."""
    restarts = Restarts(cap)
    now, decided = 0.0, []
    for gap in gaps:
        now += gap
        pause = restarts.exited(now)
        if pause is None:
            break
        assert 0 < pause <= 10.0
        decided.append(now)
        assert len([t for t in decided if t > now - 60.0]) <= cap


def test_exits_are_described() -> None:
    """A return code in words: an exit code, or the signal's name."""
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-200) == "signal 200"


def test_exit_code_is_0_only_when_every_worker_stopped_cleanly() -> None:
    """0 when every worker exited 0; a killed or failed one makes it EXIT_UNCLEAN."""
    assert exit_code([0, 0]) == EXIT_OK
    assert exit_code([]) == EXIT_OK
    assert exit_code([0, -signal.SIGKILL]) == EXIT_UNCLEAN
    assert exit_code([1, 0]) == EXIT_UNCLEAN


def test_worker_argv_gives_each_its_id_the_shared_ports_and_its_metrics_port() -> None:
    """The user's flags first, then the worker's (later flags win): one worker each."""
    cfg = config(
        workers=3, metrics_listen="127.0.0.1:9100", api_listen="0.0.0.0:0", api_key="k" * 16
    )
    plan = Plan(listen="127.0.0.1:8080", api_listen="0.0.0.0:8090", base_id="gw-a")
    user = ["--workers", "3", "--jwt-secret", SECRET, "--api-key", "k" * 16]
    argv = worker_argv(user, cfg, plan, 2)
    assert argv[:3] == [sys.executable, "-m", "im_gateway"]
    loaded = load(argv[3:], {}).config
    assert loaded.workers == 1
    assert loaded.reuse_port is True
    assert loaded.listen == "127.0.0.1:8080"
    assert loaded.api_listen == "0.0.0.0:8090"
    assert loaded.gateway_id == "gw-a-2"
    assert loaded.metrics_listen == "127.0.0.1:9102"


def test_worker_argv_keeps_ipv6_brackets_and_metrics_port_0() -> None:
    """``[::1]:PORT`` stays parseable; a metrics port 0 stays 0 (each worker a free one)."""
    cfg = config(workers=2, listen="[::1]:0", metrics_listen="[::1]:0")
    plan = Plan(listen="[::1]:8080", api_listen=None, base_id="gw-b")
    loaded = load(worker_argv(["--jwt-secret", SECRET], cfg, plan, 1)[3:], {}).config
    assert (loaded.host, loaded.port) == ("::1", 8080)
    assert loaded.metrics_listen == "[::1]:0"
    assert loaded.api_listen is None


def test_workers_flag_and_environment() -> None:
    """--workers and --worker-restarts come from flags or IM_GATEWAY_*; 1 is the default."""
    assert load(["--jwt-secret", SECRET], {}).config.workers == 1
    env = {"IM_GATEWAY_WORKERS": "4", "IM_GATEWAY_WORKER_RESTARTS": "9"}
    cfg = load(["--jwt-secret", SECRET], env).config
    assert (cfg.workers, cfg.worker_restarts) == (4, 9)
    assert load(["--jwt-secret", SECRET, "--workers", "2"], env).config.workers == 2


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"workers": 0}, "--workers"),
        ({"workers": 65}, "--workers"),
        ({"worker_restarts": -1}, "--worker-restarts"),
        ({"metrics_listen": "nowhere"}, "--metrics-listen"),
        ({"workers": 3, "metrics_listen": "127.0.0.1:65534"}, "--metrics-listen"),
        ({"workers": 11, "gateway_id": "g" * 126}, "the last worker's id 'g+-10'"),
        ({"workers": 2, "gateway_id": "g" * 127}, "--gateway-id with --workers 2"),
    ],
)
def test_bad_worker_settings_are_refused(changes: dict[str, object], named: str) -> None:
    """A bad count, a negative cap, a metrics port range past 65535, and a --gateway-id
    whose last worker id would be too long are refused with a line naming them."""
    with pytest.raises(ConfigError, match=named):
        config(**changes)


def test_an_id_that_fits_with_its_suffix_is_taken() -> None:
    """126 characters + "-1" is 128: allowed."""
    assert config(workers=2, gateway_id="g" * 126).worker_id(1) == "g" * 126 + "-1"


def test_a_worker_is_silent_past_its_heartbeat_allowance_and_a_new_one_gets_more() -> None:
    """Quiet longer than --worker-heartbeat after a first beat: silent (for how long);
    before its first beat a worker gets FIRST_BEAT more for its start."""
    assert silent_for(100.0, 109.0, True, 10) is None
    assert silent_for(100.0, 110.5, True, 10) == 10.5
    assert silent_for(100.0, 110.5 + FIRST_BEAT - 1, False, 10) is None
    assert silent_for(100.0, 111.0 + FIRST_BEAT, False, 10) == 11.0 + FIRST_BEAT


def test_worker_heartbeat_setting() -> None:
    assert config().worker_heartbeat == 10.0
    assert config(worker_heartbeat=0).worker_heartbeat == 0
    with pytest.raises(ConfigError, match="--worker-heartbeat"):
        config(worker_heartbeat=-1)
