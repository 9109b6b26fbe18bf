"""Settings load typed values from STAMPEDE_* variables and name the variable when one is wrong."""

from __future__ import annotations

import pytest

from stampede.settings import Common, SettingsError, describe, load


def test_defaults_and_overrides_from_env() -> None:
    s = load(Common, {"STAMPEDE_REDIS_MAX_CONNECTIONS": "12", "STAMPEDE_LOG_JSON": "off"})
    assert s.redis_max_connections == 12
    assert s.log_json is False
    assert s.db_pool_max == 8


def test_a_cluster_url_means_a_replica_acknowledges_each_reserve() -> None:
    assert load(Common, {"STAMPEDE_REDIS_URL": "redis+cluster://h:7000"}).ack_replicas == 1
    assert load(Common, {"STAMPEDE_REDIS_URL": "rediss+cluster://u:p@h:7000/0"}).ack_replicas == 1
    assert load(Common, {"STAMPEDE_REDIS_URL": "redis://h:6379/0"}).ack_replicas == 0
    chosen = {"STAMPEDE_REDIS_URL": "redis+cluster://h:7000", "STAMPEDE_REDIS_ACK_REPLICAS": "0"}
    assert load(Common, chosen).ack_replicas == 0


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"STAMPEDE_REDIS_MAX_CONNECTIONS": "many"}, "STAMPEDE_REDIS_MAX_CONNECTIONS"),
        ({"STAMPEDE_LOG_JSON": "maybe"}, "STAMPEDE_LOG_JSON"),
        ({"STAMPEDE_REDIS_URL": "http://x"}, "STAMPEDE_REDIS_URL"),
        ({"STAMPEDE_DB_POOL_MIN": "9"}, "STAMPEDE_DB_POOL_MIN"),
        ({"STAMPEDE_DB_POOL_MAX": "0"}, "STAMPEDE_DB_POOL_MAX"),
        ({"STAMPEDE_REDIS_URL": "redis+cluster://h:7000/2"}, "STAMPEDE_REDIS_URL.*only database 0"),
        ({"STAMPEDE_REDIS_URL": "redis+cluster:///0"}, "STAMPEDE_REDIS_URL.*needs a host"),
        ({"STAMPEDE_REDIS_ACK_REPLICAS": "-2"}, "STAMPEDE_REDIS_ACK_REPLICAS"),
        ({"STAMPEDE_REDIS_ACK_TIMEOUT_MS": "0"}, "STAMPEDE_REDIS_ACK_TIMEOUT_MS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load(Common, env)


def test_every_setting_is_documented() -> None:
    for var, _default, doc in describe(Common):
        assert var.startswith("STAMPEDE_")
        assert doc, f"{var} has no documentation"


PASSWORD = "S3cr3t-PW"


@pytest.mark.parametrize(
    ("var", "url"),
    [
        ("STAMPEDE_DATABASE_URL", f"postgresql+psycopg://u:{PASSWORD}@db/x"),
        ("STAMPEDE_DATABASE_URL", f"postgresql://u:{PASSWORD}@db/x?bogus=1"),
        ("STAMPEDE_DATABASE_URL", f"postgresql://u:{PASSWORD}@[::1/x"),
        ("STAMPEDE_REDIS_URL", f"http://:{PASSWORD}@h:1/0"),
        ("STAMPEDE_REDIS_URL", f"redis://:{PASSWORD}@h:port/0"),
    ],
)
def test_configuration_errors_never_print_a_password(var: str, url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load(Common, {var: url})
    message = str(caught.value)
    assert var in message
    assert PASSWORD not in message
    assert ":***@" in message


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({"STAMPEDE_DATABASE_URL": f"postgresql+psycopg://u:{PASSWORD}@db/x"}, ["migrate"]),
        ({"STAMPEDE_DATABASE_URL": f"postgresql://u:{PASSWORD}@db/x?bogus=1"}, ["migrate"]),
        ({}, ["migrate", "--database-url", f"postgresql://u:{PASSWORD}@[::1/x"]),
        ({"STAMPEDE_REDIS_URL": f"redis://:{PASSWORD}@h:port/0"}, ["audit", "--sale", "x", "--wait", "0"]),
    ],
)
def test_the_cli_never_prints_a_password(env: dict[str, str], args: list[str]) -> None:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("STAMPEDE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "stampede_dev.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert PASSWORD not in proc.stdout + proc.stderr, proc.stderr
    assert "***" in proc.stderr


def test_log_lines_never_carry_a_password() -> None:
    import logging

    from stampede.logs import JsonFormatter, PlainFormatter

    try:
        raise ValueError(f'bad URI: "postgresql://u:{PASSWORD}@db/x"')
    except ValueError:
        import sys

        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "connecting to %s", (f"redis://:{PASSWORD}@r:6379/0",), sys.exc_info()
        )
    record.url = f"postgresql://app:{PASSWORD}@db/x"
    for formatter in (JsonFormatter(), PlainFormatter("%(message)s")):
        line = formatter.format(record)
        assert PASSWORD not in line, line
        assert ":***@" in line
