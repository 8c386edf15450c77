"""ShelfCast edge node runtime."""

__version__ = "0.1.0"
