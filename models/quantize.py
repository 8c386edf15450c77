"""Float and full-integer int8 TFLite conversion of the inference model.

int8: ``Optimize.DEFAULT`` + a representative dataset drawn from training
examples + ``TFLITE_BUILTINS_INT8``; float inputs/outputs are int8 too (the
node quantizes its sparse repeat vectors directly, which is cheaper than a
float input). Item-id inputs stay int32.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge.ranking.features import INPUT_NAMES
from models.dataset import Examples
from models.train import _tf, dense_batch, inference_model

log = logging.getLogger("shelfcast.models.quantize")


def convert(weights: Path, ex: Examples, out_dir: Path, n_rep: int = 300, seed: int = 0) -> dict[str, Path]:
    with np.load(weights) as z:
        w = {k: z[k] for k in z.files}
    return convert_model(inference_model(w, ex.context.shape[1]), w["in_table"].shape[0] - 1, ex, out_dir,
                         n_rep=n_rep, seed=seed)


def convert_model(model: Any, V: int, ex: Examples, out_dir: Path, n_rep: int = 300, seed: int = 0
                  ) -> dict[str, Path]:
    """Float and int8 conversion of an inference Keras model (one network or a seed ensemble's)."""
    tf = _tf()
    out_dir.mkdir(parents=True, exist_ok=True)

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    float_bytes = conv.convert()
    (out_dir / "model_float.tflite").write_bytes(float_bytes)

    rng = np.random.default_rng(seed)
    sel = rng.choice(len(ex), min(n_rep, len(ex)), replace=False)

    def rep_data() -> Iterator[dict[str, np.ndarray]]:
        for i in sel:
            b = dense_batch(ex, np.array([i]), V)
            yield {n: b[n] for n in INPUT_NAMES}

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep_data
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    int8_bytes = conv.convert()
    (out_dir / "model_int8.tflite").write_bytes(int8_bytes)
    log.info("float %d bytes, int8 %d bytes (%.1f %%)", len(float_bytes), len(int8_bytes),
             100 * len(int8_bytes) / len(float_bytes))
    return {"float": out_dir / "model_float.tflite", "int8": out_dir / "model_int8.tflite"}


def op_summary(path: Path) -> dict[str, Any]:
    """Op names and tensor dtypes of a .tflite, to state in the manifest that it is int8."""
    from edge.ranking.ranker import make_interpreter

    it = make_interpreter(path.read_bytes())
    ops = sorted({d["op_name"] for d in it._get_ops_details()}) if hasattr(it, "_get_ops_details") else []
    return {"ops": ops}
