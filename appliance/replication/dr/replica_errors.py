"""The DR replica's error (its own module: the replica and its resync part both raise it)."""


class ReplicaError(RuntimeError):
    """The replica cannot take these records (sequence mismatch, journal trouble)."""
