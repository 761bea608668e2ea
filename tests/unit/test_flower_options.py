"""How `modelfarm flower` starts Flower (app/local/flower.py): options checked without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from app.config import Settings
from app.local.flower import FlowerRefused, flower_argv, flower_env, is_loopback


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", **values)  # type: ignore[arg-type]


def _options(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))


def test_flower_shows_args_and_keeps_its_history(tmp_path: Path) -> None:
    options = _options(flower_argv(_settings(tmp_path, flower_max_tasks=500)))
    assert "args" in options["tasks_columns"].split(",")  # where the job id is
    assert options["persistent"] == "True"
    assert options["db"] == str((tmp_path / "flower.db").resolve())
    assert options["max_tasks"] == "500"
    assert int(options["state_save_interval"]) > 0  # a crash loses at most that much


def test_the_password_goes_through_the_environment(tmp_path: Path) -> None:
    settings = _settings(tmp_path, flower_basic_auth=SecretStr("ops:pa55"))
    assert not any("pa55" in a for a in flower_argv(settings))
    assert flower_env(settings) == {"FLOWER_BASIC_AUTH": "ops:pa55"}
    assert flower_env(_settings(tmp_path)) == {}


def test_no_password_is_refused_beyond_loopback(tmp_path: Path) -> None:
    flower_argv(_settings(tmp_path, api_host="127.0.0.1"))
    for host in ("0.0.0.0", "", "10.1.2.3", "flower.example"):
        with pytest.raises(FlowerRefused, match="MODELFARM_FLOWER_BASIC_AUTH"):
            flower_argv(_settings(tmp_path, api_host=host))
    flower_argv(_settings(tmp_path, api_host="0.0.0.0", flower_basic_auth=SecretStr("a:b")))
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")


@pytest.mark.parametrize("value", ["nopassword", ":pw", "user:", "user:a,b"])
def test_a_malformed_basic_auth_setting_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError, match="user:password"):
        _settings(tmp_path, flower_basic_auth=SecretStr(value))
