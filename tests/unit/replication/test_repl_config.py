"""Configuration: good files load, bad ones are refused with a message naming the key."""

import datetime as dt

import pytest

from appliance.replication.config import (
    ConfigError,
    in_window,
    receiver_config,
    transmitter_config,
)

U = "0b5e6a4c-0000-4000-8000-000000000001"


def rx(**kw):
    d = {"identity": "dr", "listen": "127.0.0.1:7700", "state_dir": "/tmp/s",
         "control_socket": "/tmp/c.sock", "insecure": True,
         "volume": [{"uuid": U, "size_bytes": 1 << 20}]}
    d.update(kw)
    return d


def tx(**kw):
    d = {"identity": "a", "peer": "127.0.0.1:7700", "peer_identity": "dr", "journal": "/j",
         "volume_uuid": U, "size_bytes": 1 << 20, "control_socket": "/tmp/t.sock",
         "insecure": True}
    d.update(kw)
    return d


def test_good_configs_load():
    r = receiver_config(rx())
    assert r.listen == ("127.0.0.1", 7700) and r.tls is None
    assert str(r.volumes[0].spec.uuid) == U and r.volumes[0].spec.block_size == 512
    t = transmitter_config(tx(blackout=["22:00-06:00"], bandwidth_limit=1_000_000))
    assert t.bandwidth_limit == 1e6 and t.generation == 1


@pytest.mark.parametrize("d, words", [
    (rx(listen="nowhere"), "host:port"),
    (rx(volume=[{"uuid": "x", "size_bytes": 512}]), "not a uuid"),
    (rx(volume=[{"uuid": U, "size_bytes": 1000}]), "multiple of 512"),
    (rx(volume=[{"uuid": U, "size_bytes": 4096, "block_size": 1024}]), "512 or 4096"),
    (rx(volume=[{"uuid": U, "size_bytes": 512}] * 2), "listed twice"),
    (rx(heartbeat_s=5, dead_after_s=1), "heartbeat_s"),
    ({**rx(), "insecure": False}, "[tls] section"),
    (rx(tls={"cert": "/c"}), "[tls] key is missing"),
    (rx(tls={"cert": "/c", "key": "/k", "ca": "/a", "psk": "x"}), "psk needs Python 3.13"),
])
def test_bad_receiver_configs(d, words):
    with pytest.raises(ConfigError) as exc:
        receiver_config(d)
    assert words in str(exc.value)


@pytest.mark.parametrize("d, words", [
    ({k: v for k, v in tx().items() if k != "peer_identity"}, "peer_identity"),
    (tx(bandwidth_limit=0), "bandwidth_limit"),
    (tx(blackout=["8-18"]), "08:00-18:00"),
    (tx(size_bytes="big"), "must be int"),
])
def test_bad_transmitter_configs(d, words):
    with pytest.raises(ConfigError) as exc:
        transmitter_config(d)
    assert words in str(exc.value)


def test_blackout_windows_including_midnight_wrap():
    day = [(dt.time(8), dt.time(18))]
    night = [(dt.time(22), dt.time(6))]
    assert in_window(dt.time(12), day) and not in_window(dt.time(18), day)
    assert in_window(dt.time(23), night) and in_window(dt.time(5), night)
    assert not in_window(dt.time(12), night)
