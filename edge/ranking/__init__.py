"""Scoring the catalogue for one shopper: int8 TFLite model, re-ranking, cold-start fallback."""
