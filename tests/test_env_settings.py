"""Counts from the environment: a bad value warns and keeps the default instead of a traceback."""

import random

import pytest

from spectrum_fast.env_settings import env_count, env_switch
from spectrum_fast.host_threads import process_cores


def test_env_count(monkeypatch, seed):
    rng = random.Random(seed)
    name, default = "SPECTRUM_FAST_TEST_COUNT", rng.randint(2, 50)
    monkeypatch.delenv(name, raising=False)
    assert env_count(name, default) == default
    value = rng.randint(1, 1000)
    monkeypatch.setenv(name, f" {value} ")
    assert env_count(name, default) == value
    monkeypatch.setenv(name, "0")
    assert env_count(name, default) == 1 and env_count(name, default, minimum=0) == 0
    monkeypatch.setenv(name, "")
    assert env_count(name, default) == default
    monkeypatch.setenv(name, "four")
    with pytest.warns(UserWarning, match=f"{name}='four' is not a whole number: using {default}"):
        assert env_count(name, default) == default


@pytest.mark.parametrize("default", [False, True])
def test_env_switch(monkeypatch, default):
    name = "SPECTRUM_FAST_TEST_SWITCH"
    monkeypatch.delenv(name, raising=False)
    assert env_switch(name, default) is default
    for text, value in (("1", True), (" 0 ", False), ("", default)):
        monkeypatch.setenv(name, text)
        assert env_switch(name, default) is value
    monkeypatch.setenv(name, "yes")
    with pytest.warns(UserWarning, match=f"{name}='yes' is not 0 or 1: using {int(default)}"):
        assert env_switch(name, default) is default


def test_bad_rank_threads_keeps_the_share(monkeypatch):
    monkeypatch.delenv("SPECTRUM_FAST_RANK_THREADS", raising=False)
    share = process_cores()
    monkeypatch.setenv("SPECTRUM_FAST_RANK_THREADS", "many")
    with pytest.warns(UserWarning, match="SPECTRUM_FAST_RANK_THREADS"):
        assert process_cores() == share
    monkeypatch.setenv("SPECTRUM_FAST_RANK_THREADS", "3")
    assert process_cores() == 3
