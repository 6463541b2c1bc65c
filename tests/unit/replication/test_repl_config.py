"""Configuration: good files load, bad ones are refused with a message naming the key."""

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from appliance.replication.config import (
    ConfigError,
    ReplicaConfig,
    TransmitterConfig,
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
    (rx(tls={"cert": "/c", "key": "/k", "ca": "/a", "psk": "x"}), "pre-shared keys are not supported"),
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


# --- strict: unknown keys and wrong types at every level, defaults from the dataclasses ---


def tls(**kw):
    return {"cert": "/c.pem", "key": "/k.pem", "ca": "/ca.pem", **kw}


@pytest.mark.parametrize("d, words", [
    (tx(bandwith_limit=1), "unknown setting bandwith_limit: did you mean bandwidth_limit?"),
    (tx(protocol="C"), "unknown setting protocol: the closest known is"),
    (tx(heartbeat=1.0), "unknown setting heartbeat: did you mean heartbeat_s?"),
    (tx(tsl=tls()), "unknown table [tsl]: did you mean [tls]?"),
    (tx(volume=[{"uuid": U}]), "unknown table [[volume]]"),
    ({**tx(tls=tls(cerd="/x")), "insecure": False}, "unknown setting [tls] cerd: did you mean "
                                                    "cert?"),
    (tx(size_bytes="big"), "size_bytes must be int, got 'big'"),
    (tx(size_bytes=True), "size_bytes must be int, got True"),
    (tx(compression="yes"), "compression must be bool, got 'yes'"),
    (tx(bandwidth_limit="1M"), "bandwidth_limit must be float, got '1M'"),
    (tx(blackout="08:00-18:00"), "blackout must be a list of str"),
    (tx(insecure="true"), "insecure must be bool"),
    (tx(tls="cert.pem"), "[tls] must be a table"),
    (tx(batch_bytes=0), "batch_bytes must be positive, got 0"),
    (tx(window_bytes=-1), "window_bytes must be positive, got -1"),
    (tx(backoff_max_s=0), "backoff_max_s must be positive, got 0"),
    (tx(resync_clear_timeout_s=0.0), "resync_clear_timeout_s must be positive"),
    (tx(generation=-1), "generation must be >= 0"),
    (tx(mirror="/m"), "resync needs both 'mirror' and 'bitmap'"),
    (tx(resync_region_bytes=1000), "resync_region_bytes must be a multiple of 512"),
    (tx(volume_uuid="nope"), "volume_uuid 'nope' is not a uuid"),
    (tx(peer="dr"), "peer 'dr' must be host:port"),
])
def test_the_transmitter_refuses_unknown_keys_and_wrong_values(d, words):
    with pytest.raises(ConfigError) as exc:
        transmitter_config(d, "tx.toml")
    assert str(exc.value).startswith("tx.toml: ") and words in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("d, words", [
    (rx(hartbeat_s=1.0), "unknown setting hartbeat_s: did you mean heartbeat_s?"),
    (rx(volumes=[{"uuid": U, "size_bytes": 512}]),
     "unknown table [[volumes]]: did you mean [[volume]]?"),
    (rx(volume=[{"uuid": U, "size_bytes": 512, "journalsize": 1 << 20}]),
     "unknown setting [[volume]] #1 journalsize: did you mean journal_size?"),
    (rx(volume=[{"uuid": U, "size_bytes": 512}, {"uuid": U, "size": 512}]),
     "unknown setting [[volume]] #2 size: did you mean size_bytes?"),
    ({**rx(tls=tls(ca_file="/x")), "insecure": False}, "unknown setting [tls] ca_file"),
    (rx(volume=[{"uuid": U, "size_bytes": "1G"}]), "[[volume]] #1 size_bytes must be int"),
    (rx(volume=[{"uuid": U, "size_bytes": 512, "allowed_primaries": "site-a"}]),
     "[[volume]] #1 allowed_primaries must be a list of str, got 'site-a'"),
    (rx(volume={"uuid": U}), "[[volume]] must be an array of tables"),
    (rx(volume=[{"uuid": U, "size_bytes": 512, "journal_size": 4096}]),
     "[[volume]] #1 journal_size 4096 is too small"),
    (rx(heartbeat_s="1"), "heartbeat_s must be float, got '1'"),
    (rx(listen=7700), "listen must be str, got 7700"),
    ({k: v for k, v in rx().items() if k != "state_dir"}, "state_dir is missing"),
])
def test_the_receiver_refuses_unknown_keys_and_wrong_values(d, words):
    with pytest.raises(ConfigError) as exc:
        receiver_config(d, "rx.toml")
    assert str(exc.value).startswith("rx.toml: ") and words in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)


def test_the_defaults_are_the_dataclass_fields():
    """A file with only the required keys gives exactly the dataclasses' defaults."""
    t = transmitter_config(tx())
    for spec in dataclasses.fields(TransmitterConfig):
        if spec.default is not dataclasses.MISSING:
            assert getattr(t, spec.name) == spec.default, spec.name
        elif spec.default_factory is not dataclasses.MISSING:
            assert getattr(t, spec.name) == spec.default_factory(), spec.name
    r = receiver_config(rx())
    assert (r.heartbeat_s, r.dead_after_s, r.compression) == (1.0, 5.0, True)
    volume = r.volumes[0]
    assert volume.journal_size == ReplicaConfig.__dataclass_fields__["journal_size"].default
    assert volume.spec.block_size == 512 and volume.spec.allowed_primaries == frozenset()
    assert receiver_config({**rx(), "volume": []}).volumes == []


def test_numbers_accept_what_toml_writes():
    t = transmitter_config(tx(bandwidth_limit=12_500_000, backoff_max_s=2, heartbeat_s=1,
                              dead_after_s=3, resync_clear_timeout_s=5))
    assert t.bandwidth_limit == 12_500_000.0 and isinstance(t.bandwidth_limit, float)
    assert isinstance(t.backoff_max_s, float) and isinstance(t.heartbeat_s, float)
    t = transmitter_config(tx(bandwidth_limit=2.5e6, batch_bytes=1 << 16,
                              window_bytes=1 << 22))
    assert (t.bandwidth_limit, t.batch_bytes, t.window_bytes) == (2.5e6, 1 << 16, 1 << 22)


def test_every_key_of_a_full_file_is_known():
    """The keys the module docstring documents, all at once (the integration tier's files
    use a subset)."""
    t = transmitter_config({**tx(), "insecure": False, "tls": tls(), "block_size": 4096,
                            "size_bytes": 1 << 20, "generation": 3, "compression": True,
                            "bandwidth_limit": 1e6, "blackout": ["08:00-18:00"],
                            "heartbeat_s": 0.5, "dead_after_s": 3.0, "batch_bytes": 1 << 20,
                            "window_bytes": 16 << 20, "backoff_max_s": 1.0, "mirror": "/m",
                            "bitmap": "/b", "resync_skip_matching": True,
                            "resync_region_bytes": 1 << 20, "resync_clear_timeout_s": 30.0})
    assert t.tls is not None and t.mirror == Path("/m") and t.block_size == 4096
    r = receiver_config({**rx(), "insecure": False, "tls": tls(), "compression": False,
                         "volume": [{"uuid": U, "size_bytes": 1 << 20, "block_size": 4096,
                                     "journal_size": 1 << 20, "allowed_primaries": ["a"],
                                     "mirror": "/dev/vg/lv"}]})
    assert r.volumes[0].paths.mirror == Path("/dev/vg/lv") and not r.compression


# --- [tls]: exactly one of ca (a CA both sites trust) and peers (pinned certificates) ------


def test_tls_takes_a_ca_or_pinned_peers():
    t = transmitter_config({**tx(tls={"cert": "/c.pem", "key": "/k.pem", "ca": "/ca.pem"}),
                            "insecure": False})
    assert t.tls is not None and t.tls.ca == Path("/ca.pem") and t.tls.peers == ()
    r = receiver_config({**rx(tls={"cert": "/c.pem", "key": "/k.pem",
                                   "peers": ["/a.pem", "/b.pem"]}), "insecure": False})
    assert r.tls is not None and r.tls.ca is None
    assert r.tls.peers == (Path("/a.pem"), Path("/b.pem"))


@pytest.mark.parametrize("table, words", [
    ({"cert": "/c", "key": "/k", "ca": "/a", "peers": ["/p.pem"]},
     "[tls] ca and peers are both set: keep one"),
    ({"cert": "/c", "key": "/k"}, "[tls] ca or peers is missing: add one"),
    ({"cert": "/c", "key": "/k", "peers": "/p.pem"}, "[tls] peers must be a list of str"),
    ({"cert": "/c", "key": "/k", "peer": ["/p.pem"]},
     "unknown setting [tls] peer: did you mean peers?"),
])
@pytest.mark.parametrize("side", ["tx", "rx"])
def test_tls_refuses_both_or_neither_of_ca_and_peers(table, words, side):
    load, d = ((transmitter_config, tx) if side == "tx" else (receiver_config, rx))
    with pytest.raises(ConfigError) as exc:
        load({**d(tls=table), "insecure": False}, f"{side}.toml")
    assert str(exc.value).startswith(f"{side}.toml: ") and words in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)
