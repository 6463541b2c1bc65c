"""Journal entries through the native protocol: the fields a journald socket receives, the
binary form of a value with a newline, and the log when there is no journald."""

from __future__ import annotations

import logging

import pytest
from exporter_servers import FakeJournal, parse_entry

from appliance.exporter.journal_log import JournalSender, encode


def test_an_entry_arrives_with_its_message_id_priority_and_fields(tmp_path):
    journal = FakeJournal(tmp_path / "journal.sock")
    try:
        sender = JournalSender(journal.path)
        assert sender.send("LinkDown raised: link of vol1 is down", priority=2,
                           message_id="b9154f0560f64ad2b26717b5475541db", alert="LinkDown",
                           volume="vol1", peer=None)
        (entry,) = journal.entries()
    finally:
        journal.close()
    assert entry == {"MESSAGE": "LinkDown raised: link of vol1 is down", "PRIORITY": "2",
                     "MESSAGE_ID": "b9154f0560f64ad2b26717b5475541db",
                     "SYSLOG_IDENTIFIER": "appliance-exporter", "ALERT": "LinkDown",
                     "VOLUME": "vol1"}


def test_a_value_with_a_newline_takes_the_binary_form():
    data = encode({"MESSAGE": "two\nlines", "A": "b"})
    assert data == b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\nA=b\n"
    assert parse_entry(data) == {"MESSAGE": "two\nlines", "A": "b"}
    with pytest.raises(ValueError, match="journal field name"):
        encode({"bad-name": "x"})


def test_without_journald_the_entry_goes_to_the_log(tmp_path, caplog):
    sender = JournalSender(tmp_path / "no-such.sock")
    with caplog.at_level(logging.INFO, logger="appliance-exporter"):
        assert not sender.send("JournalHighWater cleared: below 70%", priority=5,
                               message_id="1f9de23510f44a7a84861f1b1104240e", volume="vol1")
    (record,) = [r for r in caplog.records if r.levelno == logging.INFO]
    assert "JournalHighWater cleared: below 70%" in record.getMessage()
    assert "MESSAGE_ID=1f9de23510f44a7a84861f1b1104240e" in record.getMessage()
    assert "VOLUME=vol1" in record.getMessage()
