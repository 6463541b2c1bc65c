"""The primary wing: the transmitter, its session, resync, verify, pacing and the
volume watch. Imports the shared core, never the DR wing (docs/internals.md)."""
