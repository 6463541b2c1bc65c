"""Provisioned replicas (``dr/provisioned.py``): the spec file round trip and its refusals,
the free-space check's figures against the real file system, files in the way never adopted,
forget's removed/kept lists, and the operations' volume lookup by uuid or name."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from appliance.replication.config import ReplicaConfig, replica_paths
from appliance.replication.dr import operations, provisioned
from appliance.replication.dr.replica import Replica
from appliance.replication.dr.replica_errors import ReplicaError
from appliance.replication.handshake import Hello, Refused, VolumeSpec

VOL = uuid.UUID("0b5e6a4c-0000-4000-8000-0000000000ee")
SIZE = 128 * 512


def hello(**kw) -> Hello:
    base = dict(identity="site-a", volume_uuid=VOL, size_bytes=SIZE, block_size=512,
                generation=1, first_seq=1, name="vol1")
    return Hello(**{**base, **kw})


def free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_human_sizes():
    assert [provisioned.human(n) for n in (12, 900 << 10, 256 << 20, 1 << 30, 1288490189,
                                           3 << 40)] == \
        ["12 bytes", "900 KiB", "256 MiB", "1 GiB", "1.2 GiB", "3 TiB"]


def test_create_records_the_spec_and_load_all_finds_it(tmp_path):
    spec = provisioned.create(tmp_path, hello(), 1 << 20)
    path = tmp_path / str(VOL) / "provisioned.json"
    assert json.loads(path.read_text())["primary"] == "site-a"
    assert provisioned.load_all(tmp_path) == [spec]
    cfg = spec.replica_config(tmp_path)
    assert cfg.spec == VolumeSpec(VOL, SIZE, 512, frozenset({"site-a"}))
    assert cfg.paths == replica_paths(tmp_path, VOL) and cfg.journal_size == 1 << 20
    # A [[volume]] table for the same uuid takes it over; others are added after the tables.
    table = ReplicaConfig(VolumeSpec(VOL, SIZE, 512), replica_paths(tmp_path, VOL))
    assert provisioned.replica_configs(tmp_path, [table]) == [(table, None)]
    assert provisioned.replica_configs(tmp_path, []) == [(cfg, spec)]


@pytest.mark.parametrize("text, words", [
    ("{", "unusable"),
    (json.dumps({"format_version": 9}), "format_version 9"),
    (json.dumps({"format_version": 1, "volume_uuid": str(VOL), "size_bytes": "1",
                 "created": 1.0}),
     "size_bytes is '1'"),
])
def test_a_damaged_spec_is_refused_naming_the_file(tmp_path, text, words):
    path = tmp_path / str(VOL) / "provisioned.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ReplicaError, match=words) as exc:
        provisioned.load_all(tmp_path)
    assert str(path) in str(exc.value) and "remove that directory" in str(exc.value)


def test_no_space_is_refused_with_the_figures_and_nothing_is_created(tmp_path):
    journal = free(tmp_path) + (1 << 30)
    with pytest.raises(Refused) as exc:
        provisioned.create(tmp_path / "replicas", hello(), journal)
    err = exc.value
    assert err.code == "no-space"
    assert err.reason.startswith(f"needs {provisioned.human(SIZE + journal + (1 << 20))} "
                                 f"(mirror 64 KiB + journal {provisioned.human(journal)} + "
                                 f"1 MiB for its state), "), err.reason
    assert err.reason.endswith(f" free in {tmp_path / 'replicas'}: free space or provision a "
                               f"replica on a block device"), err.reason
    assert list(tmp_path.iterdir()) == []


def test_files_in_the_way_are_never_adopted(tmp_path):
    (tmp_path / str(VOL)).mkdir()
    (tmp_path / str(VOL) / "mirror").write_bytes(b"x")
    with pytest.raises(Refused, match="holds files \\(mirror\\)") as exc:
        provisioned.create(tmp_path, hello(), 1 << 20)
    assert exc.value.code == "unknown-volume"
    assert not (tmp_path / str(VOL) / "provisioned.json").exists()


@pytest.mark.parametrize("remove_data", [False, True])
def test_forget_says_what_it_removed_and_what_remains(tmp_path, remove_data):
    cfg = provisioned.create(tmp_path, hello(), 1 << 20).replica_config(tmp_path)
    r = Replica(cfg)
    r.bind(hello(), 0)
    r.close()
    d = tmp_path / str(VOL)
    removed, kept = provisioned.forget(tmp_path, cfg, remove_data=remove_data)
    assert removed[0] == str(d / "provisioned.json")
    files = {str(d / f) for f in ("mirror", "journal", "state.json")}
    if remove_data:
        assert files | {str(d)} <= set(removed) and kept == [] and not d.exists()
    else:
        assert removed == [str(d / "provisioned.json")]
        assert files | {str(d)} <= set(kept) and d.is_dir()
    assert provisioned.load_all(tmp_path) == []


def test_operations_find_a_volume_by_uuid_or_name(tmp_path):
    def cfg(u):
        return ReplicaConfig(VolumeSpec(u, SIZE, 512), replica_paths(tmp_path, u))
    a, b, c = (uuid.uuid4() for _ in range(3))
    known = {a: (cfg(a), "vol1"), b: (cfg(b), "twin"), c: (cfg(c), "twin")}
    assert operations.find(known, str(a)).spec.uuid == a
    assert operations.find(known, "vol1").spec.uuid == a
    with pytest.raises(operations.VolumeNotFound, match="2 volumes are named 'twin'"):
        operations.find(known, "twin")
    with pytest.raises(operations.VolumeNotFound, match=f"no volume 'x' .*{a} \\(vol1\\)"):
        operations.find(known, "x")
