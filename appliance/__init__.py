"""DR replication appliance: TCMU handler, write-ahead journal and replication link."""

__version__ = "0.1.0"
