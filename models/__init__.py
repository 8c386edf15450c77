"""Offline side: data preparation, training, quantization, evaluation and the shipped model."""
