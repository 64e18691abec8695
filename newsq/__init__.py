"""newsq: news classification behind a message queue (CLI and settings live here)."""

__version__ = "0.1.0"
