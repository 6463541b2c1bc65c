"""RingError, in a module of its own: ring.py is compiled by mypyc (appliance/compiled.py),
which cannot compile a subclass of RuntimeError, and RingError stays one (the device loop's
callers catch it as such)."""


class RingError(RuntimeError):
    """The ring holds something the protocol does not allow; the device must be reset."""
