"""The DR wing: the receiver, its session, the replica with its ordered apply and undo
log, promotion and the offline tools. Imports the shared core, never the primary wing
(docs/internals.md)."""
