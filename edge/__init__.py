"""ShelfCast edge node runtime."""

__version__ = "0.2.0"
