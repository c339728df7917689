"""Settings are checked before any work, and a wrong one reads as one line naming it and what it accepts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aep_assets import main
from aep_assets.settings import MIN_PROFILES, SettingError, default_profiles

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value,expected", [
    ("3", f"must be at least {MIN_PROFILES}"), (str(MIN_PROFILES - 1), f"at least {MIN_PROFILES}"),
    ("many", "a whole number"), ("-5", f"at least {MIN_PROFILES}")])
def test_too_few_profiles_are_refused_with_the_minimum(monkeypatch, value, expected):
    monkeypatch.setenv("AEP_ASSETS_PROFILES", value)
    with pytest.raises(SettingError, match=expected) as error:
        default_profiles()
    assert "AEP_ASSETS_PROFILES" in str(error.value)


def test_the_minimum_itself_is_accepted(monkeypatch):
    monkeypatch.setenv("AEP_ASSETS_PROFILES", f"{MIN_PROFILES:_}")
    assert default_profiles() == MIN_PROFILES


@pytest.mark.parametrize("variable,value,named", [
    ("AEP_ASSETS_PROFILES", "10", "AEP_ASSETS_PROFILES must be at least"),
    ("AEP_ASSETS_ENV", "prod", "AEP_ASSETS_ENV must be 'local' or 'aep'"),
    ("AEP_ASSETS_KEEP_WRITES", "0", "AEP_ASSETS_KEEP_WRITES must be a whole number of at least 1"),
    ("AEP_ASSETS_RESCORE_CRON", "every day", "AEP_ASSETS_RESCORE_CRON"),
])
def test_make_run_stops_on_a_wrong_setting_before_any_work(monkeypatch, capsys, tmp_path, variable, value, named):
    monkeypatch.setenv("AEP_ASSETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(variable, value)
    assert main.main() == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and named in err
    assert not (tmp_path / "home").exists()  # nothing started, nothing written


def test_a_home_with_another_population_is_refused(monkeypatch, capsys, tmp_path):
    home = tmp_path / "home"
    current = home / "synthetic" / "current"
    current.mkdir(parents=True)
    (current / "population.json").write_text(json.dumps(
        {"profiles": 5000, "batches": 10, "seed": 42, "weeks": 10, "end": "2026-12-01T00:00:00+00:00"}))
    monkeypatch.setenv("AEP_ASSETS_HOME", str(home))
    monkeypatch.setenv("AEP_ASSETS_PROFILES", "8000")
    assert main.main() == 2
    err = capsys.readouterr().err
    assert "profiles 5000 -> 8000" in err and "new AEP_ASSETS_HOME" in err and err.count("\n") == 1
    assert not (home / "dagster").exists()


def test_the_message_is_the_whole_output_of_a_fresh_process(tmp_path):
    """No traceback and no warning around it (Dagster's beta warnings included)."""
    env = {**os.environ, "AEP_ASSETS_HOME": str(tmp_path / "home"), "AEP_ASSETS_ENV": "prod"}
    completed = subprocess.run([sys.executable, "-m", "aep_assets.main"], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=120)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == "aep_assets: AEP_ASSETS_ENV must be 'local' or 'aep', got 'prod'\n"
