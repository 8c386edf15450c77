"""ShelfCast edge node runtime."""

__version__ = "0.3.2"
