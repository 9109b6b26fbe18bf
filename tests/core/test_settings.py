"""Settings load typed values from STAMPEDE_* variables and name the variable when one is wrong."""

from __future__ import annotations

import pytest

from stampede.settings import Common, SettingsError, describe, load


def test_defaults_and_overrides_from_env() -> None:
    s = load(Common, {"STAMPEDE_REDIS_MAX_CONNECTIONS": "12", "STAMPEDE_LOG_JSON": "off"})
    assert s.redis_max_connections == 12
    assert s.log_json is False
    assert s.db_pool_max == 8


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"STAMPEDE_REDIS_MAX_CONNECTIONS": "many"}, "STAMPEDE_REDIS_MAX_CONNECTIONS"),
        ({"STAMPEDE_LOG_JSON": "maybe"}, "STAMPEDE_LOG_JSON"),
        ({"STAMPEDE_REDIS_URL": "http://x"}, "STAMPEDE_REDIS_URL"),
        ({"STAMPEDE_DB_POOL_MIN": "9"}, "STAMPEDE_DB_POOL_MIN"),
        ({"STAMPEDE_DB_POOL_MAX": "0"}, "STAMPEDE_DB_POOL_MAX"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load(Common, env)


def test_every_setting_is_documented() -> None:
    for var, _default, doc in describe(Common):
        assert var.startswith("STAMPEDE_")
        assert doc, f"{var} has no documentation"
