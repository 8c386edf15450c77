"""Export: model.tflite + items.npz (side data) + manifest.json, verified by loading it back."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edge.ranking.features import (
    DECAY_DAYS,
    HEAT_WEEKS,
    HIST_LEN,
    MAX_REPEAT_ITEMS,
    RECENCY_DAYS,
    REPEAT_FEATURES,
    SESSION_LEN,
)
from edge.ranking.ranker import MANIFEST_FORMAT, make_interpreter
from models.data import Prepared
from models.dataset import context_spec
from models.train import ATTRS

ATTR_NAMES = {"dept": "department", "cat": "category", "ptype": "product_type", "brand": "brand"}


def _io_spec(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in details:
        name = d["name"]
        for pre in ("serving_default_",):
            if name.startswith(pre):
                name = name[len(pre):]
        name = name.split(":")[0]
        scale, zp = d["quantization"]
        out.append({"name": name, "tensor": d["name"], "shape": [int(x) for x in d["shape"]],
                    "dtype": np.dtype(d["dtype"]).name, "quantization": {"scale": float(scale),
                                                                          "zero_point": int(zp)}})
    return out


def train_popularity(prep: Prepared, last_week: int | None = None) -> np.ndarray:
    """Training line counts per vocab item; with ``last_week`` before the split's (a --validation run)
    only weeks <= it, so the validation weeks do not leak into the cold-start popularity prior."""
    v = prep.a["vocab"]
    if last_week is None or last_week >= prep.split.train_last_week:
        return prep.a["train_count"][v].astype(np.float32)
    a = prep.a
    keep = (a["week"] <= last_week) & ~a["hh_holdout"][a["hh"]]
    return np.bincount(a["pcode"][keep], minlength=len(a["train_count"]))[v].astype(np.float32)


def _repeat_width(weights: Path) -> int:
    """Repeat feature columns the model was trained on (a prefix of ``repeat_matrix``'s rows)."""
    with np.load(weights) as z:
        return int(z["repeat_mlp1_kernel"].shape[0]) if "repeat_mlp1_kernel" in z.files else REPEAT_FEATURES


def side_data(prep: Prepared, weights: Path, bias_on_node: bool = True, last_week: int | None = None) -> bytes:
    with np.load(weights) as z:
        w = {k: z[k] for k in z.files}
    v = prep.a["vocab"]
    arrays: dict[str, np.ndarray] = {
        "category": (prep.a["cat"][v] - 1).astype(np.int32),
        "popularity": train_popularity(prep, last_week),
        # unit-normalised, int8: only directions matter (reasons: "because you picked up …")
        "item_emb": np.rint(127 * w["out_table"] / np.maximum(
            np.linalg.norm(w["out_table"], axis=1, keepdims=True), 1e-6)).astype(np.int8),
    }
    # the sparse repeat term, evaluated by the node for the shopper's own items (float32, tiny except rep_item)
    for k in ("repeat_mlp1_kernel", "repeat_mlp1_bias", "repeat_mlp2_kernel", "repeat_mlp2_bias",
              "repeat_linear_kernel", "repeat_linear_bias", "rep_item"):
        arrays[k] = w[k].astype(np.float32)
    if "wide_kernel" in w:  # [C, V] context → item path, int8 with one scale per context value
        wk = w["wide_kernel"].astype(np.float32)
        scale = np.maximum(np.abs(wk).max(axis=1), 1e-12) / 127.0
        arrays["wide_q"] = np.rint(wk / scale[:, None]).astype(np.int8)
        arrays["wide_scale"] = scale.astype(np.float32)
    for k in ATTRS:
        arrays[f"attr_out_{k}"] = w[f"attr_out_{k}"].astype(np.float32)
        arrays[f"attr_b_{k}"] = w[f"attr_b_{k}"].astype(np.float32)
    if bias_on_node:  # v3: the output bias is added by the node in float (not in the int8 graph)
        arrays["out_bias"] = w["out_bias"].astype(np.float32)
    if "heat_log" in w:  # item sales heat term: (w0 + w1 · has_history) · heat_log, heat as of the export
        arrays["heat_w"] = (w["heat_w"] if "heat_w" in w else np.asarray(HEAT_W)).astype(np.float32)
        arrays["heat_log"] = w["heat_log"].astype(np.float32)
    if "cooc_w" in w:  # co-occurrence neighbours: int16 ids, uint8 cosine (scale 1/255)
        arrays["cooc_w"] = w["cooc_w"].astype(np.float32)
        arrays["cooc_idx"] = w["cooc_idx"]
        arrays["cooc_val"] = np.rint(np.clip(w["cooc_val"], 0.0, 1.0) * 255).astype(np.uint8)
        arrays["cooc_val_scale"] = np.array(1 / 255, np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


# Post-model blend weights on the repeat features (columns of features.repeat_matrix: bought, log share,
# recency, log decayed share, in last basket, has interval, due, trips, in last 3 baskets, ln(1 + baskets in
# the last 28 days)), chosen on the validation split (train weeks 1–41, evaluate 42–47); see docs/model-card.md.
# v4 adds 1.5 · ln(1 + baskets in the last 28 days): validation P1 NDCG 0.1959 → 0.1978, P2 0.2044 → 0.2059.
REPEAT_BLEND: tuple[float, ...] = (0.0, 2.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5)
# + β · ln(1 + training popularity) for shoppers without history (validation-tuned; 0 = off). v6: 0.75 (was 0.5):
# over 7 stage-1 draws (two configurations, seeds) P3b +0.0015 on average (higher in 6), P3a +0.0003
COLD_POP_BLEND = 0.75
# v6: demographics left out of a shopper-without-history's context on the node (validation: P3a +0.0012 on average
# over 7 stage-1 draws, >= 0 in 6; P3b unchanged on average; see docs/model-card.md)
COLD_PROFILE = False
# multipliers on the learned heat weights and co-occurrence weights (session, history, session × bought),
# validation-tuned: the softmax-trained weights were too flat for the top 10 (see docs/model-card.md)
HEAT_MULT = 1.0
# heat weights (no history, extra with history) when the network did not learn them (TrainConfig.heat off)
HEAT_W: tuple[float, float] = (0.4, 0.0)
COOC_MULT: tuple[float, float, float] = (16.0, 1.0, 1.0)
COOC_MULT_COLD: tuple[float, float, float] = (6.0, 1.0, 1.0)  # shoppers without history


def export(prep: Prepared, run_dir: Path, out_dir: Path, *, version: str | None = None,
           metrics: dict[str, Any] | None = None, source: str = "Dunnhumby The Complete Journey",
           which: str = "int8", repeat_blend: tuple[float, ...] = REPEAT_BLEND,
           cold_pop_blend: float = COLD_POP_BLEND, heat_mult: float = HEAT_MULT, cold_profile: bool = COLD_PROFILE,
           cooc_mult: tuple[float, ...] = COOC_MULT, cooc_mult_cold: tuple[float, ...] = COOC_MULT_COLD) -> Path:
    """Write ``out_dir``/{model.tflite, items.npz, manifest.json}; returns the manifest path."""
    model_bytes = (run_dir / f"model_{which}.tflite").read_bytes()
    train_info = json.loads((run_dir / "train.json").read_text()) if (run_dir / "train.json").exists() else {}
    side = side_data(prep, run_dir / "weights.npz", last_week=train_info.get("train_last_week"))
    it = make_interpreter(model_bytes)
    it.allocate_tensors()
    now = datetime.now(UTC)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": version or now.strftime("%Y.%m.%d-%H%M"),
        "created": now.isoformat(timespec="seconds"),
        "model_file": "model.tflite",
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "bytes": len(model_bytes),
        "side_file": "items.npz",
        "side_sha256": hashlib.sha256(side).hexdigest(),
        "quantization": "full-integer int8 (post-training, representative dataset); id inputs int32"
        if which == "int8" else "float32",
        "training_data": {"source": source, **prep.meta["data_range"], "split": prep.meta["split"],
                          "cleaning": prep.meta["stats"]},
        "train": train_info,
        "feature_spec": {
            "inputs": _io_spec(it.get_input_details()),
            "outputs": _io_spec(it.get_output_details()),
            "context": context_spec(prep).to_dict(),
            "hist_len": HIST_LEN, "session_len": SESSION_LEN, "max_repeat_items": MAX_REPEAT_ITEMS,
            "recency_days": RECENCY_DAYS, "decay_days": DECAY_DAYS,
        },
        "attributes": {**{ATTR_NAMES[k]: prep.meta["attribute_values"][ATTR_NAMES[k]] for k in ATTR_NAMES},
                       "price_band_edges": prep.meta["price_band_edges"]},
        "rerank": {"repeat_blend": [float(x) for x in repeat_blend], "cold_pop_blend": float(cold_pop_blend),
                   "cold_profile": bool(cold_profile),
                   "heat_mult": float(heat_mult), "cooc_mult": [float(x) for x in cooc_mult],
                   "cooc_mult_cold": [float(x) for x in cooc_mult_cold]},
        "node_terms": {
            "out_bias": "items.npz out_bias [V], added in float (not in the int8 graph)",
            "heat": f"(heat_w[0] + heat_w[1] * has_history) * ln(1 + baskets with the item in the {HEAT_WEEKS} "
                    f"weeks before week {train_info.get('train_last_week', '?')} + 1) (items.npz heat_log; "
                    "refresh with Ranker.set_item_heat)",
            "cooc": "cooc_w . (session, history, session x bought) co-occurrence over items.npz cooc_idx/cooc_val",
            "repeat_features": _repeat_width(run_dir / "weights.npz"),
        },
        "metrics": metrics or {},
        "vocabulary": prep.vocab_skus(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.tflite").write_bytes(model_bytes)
    (out_dir / "items.npz").write_bytes(side)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))
    from edge.ranking.ranker import Ranker

    Ranker.load(out_dir)  # refuses its own output if anything is inconsistent
    return out_dir / "manifest.json"


def copy_release(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for n in ("model.tflite", "items.npz", "manifest.json"):
        shutil.copy2(src / n, dst / n)
