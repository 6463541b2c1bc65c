"""Replication link: wire protocol, transmitter (primary side), receiver (DR side)."""
