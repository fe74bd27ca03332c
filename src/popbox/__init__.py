"""popbox: a POP3 server."""

__version__ = "0.1.0"
