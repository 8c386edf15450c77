"""Scoring the catalogue for one shopper: int8 TFLite model, re-ranking, cold-start fallback.

The stable API is ``Ranker``, ``RecRequest``, ``Recommendation`` (see ``edge.ranking.ranker``);
``edge.ranking.fallback`` is the popularity-by-zone×hour fallback.
"""

from edge.ranking.ranker import ModelError, Ranker, Recommendation, RecRequest, RerankConfig

__all__ = ["ModelError", "Ranker", "RecRequest", "Recommendation", "RerankConfig"]
