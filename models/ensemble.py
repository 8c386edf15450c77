"""A seed ensemble of stage-1 networks in the unchanged release format.

N independently seeded stage-1 draws (same configuration, different seeds) are combined so that the node code
and the release format do not change: one .tflite whose graph holds the N towers and averages their score
outputs (same inputs, same three outputs, one invoke), and one ``weights.npz`` for ``export.side_data`` whose
node-side terms are the draws' averages wherever the term is linear in its weights:

- exact averages: output bias, wide context → item kernel, co-occurrence weights, the repeat term's per-item
  and linear weights, and its 16-unit MLP (the N MLPs side by side: 16·N hidden units, output weights / N);
- the repeat gate: the graph outputs the mean of the N gates, and the node multiplies it with the mean repeat
  logit, so the repeat term is mean(g) · mean(f) instead of mean(g · f) (the one approximation; measured in
  docs/model-card.md, v8 round);
- draw 0's (not averaged, the spaces of independent draws do not line up): the user-vector output and the
  attribute output tables (new items, P4) and the item directions ``item_emb`` (stage 2's cosine column,
  reasons). Data-derived tables (heat, co-occurrence neighbours) are the same in every draw (checked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.train import ATTRS

# identical in every draw of one split (data, not weights): taken from draw 0 after an equality check
_SAME = ("heat_log", "cooc_idx", "cooc_val")
# averaged exactly (the node adds them linearly)
_MEAN = ("out_bias", "wide_kernel", "cooc_w", "rep_item", "repeat_linear_kernel", "repeat_linear_bias",
         "repeat_mlp2_bias")


def load_weights(paths: list[Path]) -> list[dict[str, np.ndarray]]:
    out = []
    for p in paths:
        with np.load(p) as z:
            out.append({k: z[k] for k in z.files})
    return out


def merge_weights(ws: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The side-file weights of the ensemble (see the module docstring); graph weights are draw 0's and unused
    by ``side_data`` except ``out_table`` (item directions)."""
    n = len(ws)
    m = dict(ws[0])
    for k in _SAME:
        if k in m and any(not np.array_equal(m[k], w[k]) for w in ws[1:]):
            raise ValueError(f"draws differ in the data table {k}: not draws of one split")
    for k in _MEAN:
        if k in m:
            m[k] = np.mean([w[k].astype(np.float64) for w in ws], axis=0).astype(np.float32)
    # the N repeat MLPs side by side: relu(x [W1_1 … W1_N] + [b1_1 … b1_N]) · [W2_1; …; W2_N] / N
    m["repeat_mlp1_kernel"] = np.concatenate([w["repeat_mlp1_kernel"] for w in ws], axis=1).astype(np.float32)
    m["repeat_mlp1_bias"] = np.concatenate([w["repeat_mlp1_bias"] for w in ws]).astype(np.float32)
    m["repeat_mlp2_kernel"] = (np.concatenate([w["repeat_mlp2_kernel"] for w in ws], axis=0) / n).astype(np.float32)
    for k in ATTRS:  # draw 0's (new items are scored with draw 0's user vector)
        m[f"attr_out_{k}"], m[f"attr_b_{k}"] = ws[0][f"attr_out_{k}"], ws[0][f"attr_b_{k}"]
    return m


def inference_model(ws: list[dict[str, np.ndarray]], C: int) -> Any:
    """One Keras model with the N towers: outputs (mean of the N score vectors, draw 0's user vector, mean of
    the N repeat gates); the same inputs, names and output shapes as ``models.train.inference_model``."""
    from models.train import _tf, node_inputs

    _tf()
    import keras
    from keras import ops

    from edge.ranking.features import HIST_LEN

    n = len(ws)
    V1, D = ws[0]["in_table"].shape
    V = V1 - 1
    hi, hw, si, sw, ctx = node_inputs(C)
    ids = keras.layers.Concatenate(axis=1)([hi, si])
    w_all = ops.expand_dims(keras.layers.Concatenate(axis=1)([hw, sw]), -1)
    sets: list[tuple[Any, list[np.ndarray]]] = []
    scores, users, gates = [], [], []
    for i, w in enumerate(ws):
        emb = keras.layers.Embedding(V1, D, name=f"item_in_{i}",
                                     embeddings_initializer=keras.initializers.Constant(w["in_table"]))
        ew = emb(ids) * w_all
        h = ops.sum(ew[:, :HIST_LEN, :], axis=1)
        s = ops.sum(ew[:, HIST_LEN:, :], axis=1)
        z = keras.layers.Concatenate()([h, s, ctx])
        d1 = keras.layers.Dense(w["tower1_bias"].shape[0], activation="relu", name=f"tower1_{i}")
        d2 = keras.layers.Dense(w["tower2_bias"].shape[0], activation="relu", name=f"tower2_{i}")
        du = keras.layers.Dense(D, name=f"user_{i}")
        dg = keras.layers.Dense(1, activation="softplus", name=f"repeat_gate_{i}")
        # 1/N folded into the output kernels: the sum of the N towers' scores is their mean
        dout = keras.layers.Dense(V, name=f"item_out_{i}", use_bias=False)
        z = d2(d1(z))
        u = du(z)
        scores.append(dout(u))
        users.append(u)
        gates.append(dg(z))
        sets += [(d1, [w["tower1_kernel"], w["tower1_bias"]]), (d2, [w["tower2_kernel"], w["tower2_bias"]]),
                 (du, [w["user_kernel"], w["user_bias"]]), (dg, [w["gate_kernel"], w["gate_bias"]]),
                 (dout, [w["out_table"].T / n])]
        if "session_out_kernel" in w:
            so = keras.layers.Dense(V, use_bias=False, name=f"session_out_{i}")
            scores.append(so(s))
            sets.append((so, [w["session_out_kernel"] / n]))
    neural = keras.layers.Add()(scores) if len(scores) > 1 else scores[0]
    g = keras.layers.Average()(gates) if n > 1 else gates[0]
    model = keras.Model([hi, hw, si, sw, ctx], [neural, users[0], g], name="shelfcast_ranker")
    for layer, lw in sets:
        layer.set_weights([x.astype(np.float32) for x in lw])
    return model
