"""The mirror config string: what is accepted and what each refusal says."""

from __future__ import annotations

import pytest

from appliance.tcmu.cfgstring import MirrorConfig, check_config, parse_config

GOOD = "mirror/mirror=/srv/v1.img;journal=/srv/v1.jnl;journal_size=64M"


def test_full_config() -> None:
    cfg = parse_config("mirror/mirror=/srv/a.img;journal=/dev/vdb;journal_size=1G;"
                       "block_size=4096;bitmap=/srv/a.bm;wce=0")
    assert cfg == MirrorConfig("/srv/a.img", "/dev/vdb", 1 << 30, 4096, "/srv/a.bm", False)
    assert parse_config("mirror/" + cfg.to_cfgstring()) == cfg


def test_defaults() -> None:
    cfg = parse_config(GOOD)
    assert ((cfg.block_size, cfg.wce, cfg.bitmap_path, cfg.journal_size)
            == (512, True, "/srv/v1.jnl.bitmap", 64 << 20))
    assert check_config(GOOD) == (True, "success")


@pytest.mark.parametrize(("config", "message"), [
    ("mirror/mirror=/a;journal=/b,c", "contains a comma at position 27"),
    ("mirror/mirror=/a;journal=/b:c", "contains a colon"),
    ("mirror/mirror=/a;journal=/b\n", "contains a newline"),
    ("mirror/mirror=/" + "x" * 250 + ";journal=/b", "is 276 bytes; the kernel keeps at most 255"),
    ("file/mirror=/a;journal=/b", "handler subtype is 'file'"),
    ("mirror=/a;journal=/b", "must start with 'mirror/'"),
    ("mirror/", "empty config string"),
    ("mirror/journal=/b", "missing 'mirror=<absolute path>'"),
    ("mirror/mirror=/a", "missing 'journal=<absolute path>'"),
    ("mirror/mirror=a.img;journal=/b", "mirror=a.img must be an absolute path"),
    ("mirror/mirror=/a/../etc;journal=/b", "must not contain '..'"),
    ("mirror/mirror=/a;journal=/a", "must be different files"),
    ("mirror/mirror=/a;journal=/b;journal_size=lots", "journal_size=lots: expected a number"),
    ("mirror/mirror=/a;journal=/b;journal_size=4K", "must be at least 1M"),
    ("mirror/mirror=/a;journal=/b;block_size=1024", "block_size=1024: use 512 or 4096"),
    ("mirror/mirror=/a;journal=/b;wce=yes", "wce=yes: use 1"),
    ("mirror/mirror=/a;journal=/b;size=1G", "unknown key 'size'"),
    ("mirror/mirror=/a;journal=/b;mirror=/c", "key 'mirror' given twice"),
    ("mirror/mirror=/a;journal", "'journal' is not key=value"),
])
def test_refusals_say_what_to_fix(config: str, message: str) -> None:
    ok, text = check_config(config)
    assert not ok
    assert message in text


def test_a_group_member_names_its_mirror_and_group_and_uses_the_groups_journal() -> None:
    cfg = parse_config("mirror/mirror=/srv/log.img;group=db;journal_size=64M;wce=0")
    assert cfg == MirrorConfig("/srv/log.img", None, 64 << 20, 512, None, False, "db")
    assert (cfg.journal, cfg.bitmap_path) == (None, None)
    assert cfg.to_cfgstring() == "mirror=/srv/log.img;group=db;journal_size=67108864;wce=0"
    assert parse_config("mirror/" + cfg.to_cfgstring()) == cfg
    assert check_config("mirror/group=db-1.x;mirror=/srv/a.img") == (True, "success")


@pytest.mark.parametrize(("config", "message"), [
    ("mirror/mirror=/a;journal=/b;group=db",
     "journal= and group= together: a member of group 'db' uses the group's journal"),
    ("mirror/mirror=/a;bitmap=/b;group=db", "bitmap= and group= together"),
    ("mirror/mirror=/a;group=a b", "group=a b: a group name is letters, digits"),
    ("mirror/mirror=/a;group=", "group=: a group name is letters"),
    ("mirror/mirror=/a;group=../x", "group=../x: a group name"),
    ("mirror/group=db", "missing 'mirror=<absolute path>'"),
])
def test_group_refusals_say_what_to_fix(config: str, message: str) -> None:
    ok, text = check_config(config)
    assert not ok
    assert message in text, text
