"""The ranking network (Keras) and its training loop.

Architecture (justified in docs/model-card.md):

- item tables: every vocab item's input and output embedding is an id
  embedding plus attribute embeddings (department, category, product type,
  brand, price band); a product never seen in training is scored from the
  attribute part alone (``user · Σ attr_out + Σ attr_bias``).
- shopper tower: decay-weighted mean of history item embeddings, mean of
  session item embeddings, context (hour, weekday, store, demographics,
  history size) → MLP → user vector ``u`` (an output, for the new-item path).
- scores = u · out_table + bias + gate(u) · Σ_k A_k ⊙ repeat_k: a learned,
  per-item mix of the shopper's own repeat signal (share, recency, decayed
  share, last-basket membership, due ratio, trip frequency) with a per-shopper
  gate. Grocery is repeat-dominated; this is the part personal top-frequency
  gets right and the network learns to weigh.
- + (h0 + h1 · has_history) · ln(1 + item heat), heat = the item's baskets in
  the 14 days before the example's week (what a node knows from its own sales)
- + c0 · cooc(session) + c1 · cooc(history) + c2 · cooc(session) · bought: a
  sparse top-24 item-item co-occurrence (cosine) term, weights learned.
  The bias, heat and co-occurrence terms are added by the node in float.

Training: softmax cross-entropy against the next basket (uniform over its
items), with session reveals and dropped histories so one network serves
P1, P2 and cold-start shoppers. Deterministic for a seed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.ranking.features import REPEAT_FEATURES_V3, heat_log
from models.data import Prepared
from models.dataset import Examples
from models.sideterms import cooc_neighbours, heat_tables

log = logging.getLogger("shelfcast.models.train")

ATTRS = ("dept", "cat", "ptype", "brand", "price_band")


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 64
    hidden: int = 256
    epochs: int = 4
    batch: int = 512
    lr: float = 4e-3
    l2_item: float = 1e-6
    l2_rep_item: float = 1e-5
    dropout: float = 0.2
    wide: bool = True  # context → item scores (store / hour / demographic popularity)
    session_path: bool = True  # session embedding → item scores (co-occurrence)
    l2_wide: float = 1e-6
    # share of examples with the history dropped (cold shoppers). v6: 0.5 (was 0.25): validation P3a +0.0031
    # (+4 %) on each of 3 seeds, 0.0785 -> 0.0816 on average (see docs/model-card.md, v6 round)
    p_cold: float = 0.5
    # share of the history-dropped examples that also lose the demographics (0: only the usual 10 % of all)
    p_cold_no_profile: float = 0.0
    p_session: float = 0.6
    id_dropout: float = 0.1
    per_household: int = 30
    # learn the item sales heat weights, (w0 + w1 · has_history) · ln(1 + 14-day baskets), in the network. Off:
    # the dense [B, V] heat product made training not bit-reproducible run to run (7th digit, even with one
    # thread); the node adds the term with weights chosen on the validation split (models/export.py HEAT_W)
    heat: bool = False
    cooc: bool = True  # basket co-occurrence terms (session items, history items, session × bought)
    cooc_scale: float = 10.0  # the co-occurrence weights are cooc_scale · θ (θ starts at 0): Adam moves θ ~lr/step
    heat_scale: float = 5.0  # likewise for the two heat weights
    # likewise for the repeat term's linear weights: at scale 1, 4 epochs moved them < 1.5 from their start, and a
    # post-model blend of +2 log share +3 log decayed share was still worth +0.02 NDCG on validation
    rep_lin_scale: float = 10.0
    # repeat feature columns the network reads (a prefix of features.repeat_matrix). v4 kept v3's 8: training
    # on all 10 (+ last-3-baskets, 28-day count) left validation flat (P1 0.1959 both); the two new columns
    # are used by the node's post-model blend instead (models/export.py REPEAT_BLEND)
    repeat_features: int = REPEAT_FEATURES_V3
    seed: int = 0


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def attr_codes(prep: Prepared) -> dict[str, np.ndarray]:
    """Attribute codes of the vocab items (0 = unknown)."""
    v = prep.a["vocab"]
    return {k: prep.a[k][v].astype(np.int32) for k in ATTRS}


def attr_sizes(prep: Prepared) -> dict[str, int]:
    return {k: int(prep.a[k].max()) + 1 for k in ATTRS}


def _scatter(tf: Any, idx: Any, val: Any, B: Any, V: int) -> Any:
    """Dense [B, V, C] sums of ``val`` [B, W, C] at ``idx`` [B, W] (index V = padding, dropped)."""
    width = tf.shape(idx)[1]
    rows = tf.repeat(tf.range(B), width)
    seg = rows * (V + 1) + tf.reshape(idx, [-1])
    C = val.shape[-1]
    d = tf.math.unsorted_segment_sum(tf.reshape(val, [-1, C]), seg, B * (V + 1))
    return tf.reshape(d, [B, V + 1, C])[:, :V, :]


def build_model(V: int, C: int, codes: dict[str, np.ndarray], sizes: dict[str, int], cfg: TrainConfig,
                log_pop: np.ndarray | None = None, heat: np.ndarray | None = None,
                cooc: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """The training-time Keras model (item tables computed from id + attribute parts).

    ``heat``: [W, V] ln(1 + heat) table per week (row = example week); ``cooc``: top-K neighbour
    (idx, value) tables. The repeat term is computed sparsely on the shopper's ≤ R items (the same
    numbers the node computes), then scattered: an all-zero row adds the same constant to every
    item, which a softmax ignores, so only f(r) - f(0) is scattered."""
    tf = _tf()
    import keras

    D = cfg.dim

    class Ranking(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            init = keras.initializers.RandomNormal(stddev=0.05, seed=cfg.seed)
            reg = keras.regularizers.L2(cfg.l2_item)
            self.id_in = self.add_weight(shape=(V, D), initializer=init, regularizer=reg, name="id_in")
            self.id_out = self.add_weight(shape=(V, D), initializer=init, regularizer=reg, name="id_out")
            # start from log popularity: a few hundred Adam steps cannot climb 8 nats from zero
            b_init = keras.initializers.Constant(log_pop) if log_pop is not None else "zeros"
            self.b_id = self.add_weight(shape=(V,), initializer=b_init, name="b_id")
            self.attr_in = {k: self.add_weight(shape=(n, D), initializer=init, name=f"{k}_in")
                            for k, n in sizes.items()}
            self.attr_out = {k: self.add_weight(shape=(n, D), initializer=init, name=f"{k}_out")
                             for k, n in sizes.items()}
            self.attr_b = {k: self.add_weight(shape=(n,), initializer="zeros", name=f"{k}_b")
                           for k, n in sizes.items()}
            self.rep_item = self.add_weight(shape=(2, V), initializer="zeros", name="rep_item",
                                            regularizer=keras.regularizers.L2(cfg.l2_rep_item))
            self.rep_h = keras.layers.Dense(16, activation="relu", name="repeat_mlp1")
            self.rep_o = keras.layers.Dense(1, name="repeat_mlp2", kernel_initializer="zeros")
            # linear part starts as "bonus for bought + log share + log decayed share" (≈ top-frequency)
            lin0 = np.array([1.0, 0.5, 0.5, 0.5] + [0.0] * (cfg.repeat_features - 4), np.float32)
            self.rep_lin_k = self.add_weight(shape=(cfg.repeat_features,), name="repeat_linear_theta",
                                             initializer=keras.initializers.Constant(lin0 / cfg.rep_lin_scale))
            self.heat = heat is not None
            if self.heat:
                self.heat_w = self.add_weight(shape=(2,), initializer="zeros", name="heat_w")
            if cooc is not None:
                self.nb_idx = tf.constant(cooc[0].astype(np.int32))
                self.nb_val = tf.constant(cooc[1].astype(np.float32))
            else:
                self.nb_idx = self.nb_val = None
            self.cooc_theta = self.add_weight(shape=(3,), initializer="zeros", name="cooc_theta")
            self.drop = keras.layers.Dropout(cfg.dropout, seed=cfg.seed)
            self.d1 = keras.layers.Dense(cfg.hidden, activation="relu", name="tower1")
            self.d2 = keras.layers.Dense(cfg.hidden // 2, activation="relu", name="tower2")
            self.du = keras.layers.Dense(D, name="user")
            self.dg = keras.layers.Dense(1, activation="softplus", name="repeat_gate",
                                         bias_initializer=keras.initializers.Constant(0.55))
            self.codes = {k: tf.constant(v) for k, v in codes.items()}
            reg_w = keras.regularizers.L2(cfg.l2_wide)
            self.wide = keras.layers.Dense(V, use_bias=False, name="wide", kernel_initializer="zeros",
                                           kernel_regularizer=reg_w) if cfg.wide else None
            self.sess = keras.layers.Dense(V, use_bias=False, name="session_out", kernel_initializer="zeros",
                                           kernel_regularizer=reg_w) if cfg.session_path else None

        def in_table(self) -> Any:
            t = self.id_in
            for k in ATTRS:
                t = t + tf.gather(self.attr_in[k], self.codes[k])
            return tf.concat([tf.zeros((1, D)), t], axis=0)

        def out_table(self, mask: Any = None) -> tuple[Any, Any]:
            t = self.id_out if mask is None else self.id_out * mask[:, None]
            b = self.b_id if mask is None else self.b_id * mask
            for k in ATTRS:
                t = t + tf.gather(self.attr_out[k], self.codes[k])
                b = b + tf.gather(self.attr_b[k], self.codes[k])
            return t, b

        def call(self, x: dict[str, Any], training: bool = False, mask: Any = None) -> tuple[Any, Any]:
            tin = self.in_table()
            eh = tf.gather(tin, x["hist_items"])
            h = tf.reduce_sum(eh * x["hist_weights"][..., None], axis=1)
            es = tf.gather(tin, x["session_items"])
            s = tf.reduce_sum(es * x["session_weights"][..., None], axis=1)
            z = tf.concat([h, s, x["context"]], axis=1)
            z = self.d2(self.drop(self.d1(z), training=training))
            u = self.du(z)
            g = self.dg(z)
            tout, b = self.out_table(mask)
            neural = tf.matmul(u, tout, transpose_b=True) + b
            if self.wide is not None:
                neural = neural + self.wide(x["context"])
            if self.sess is not None:
                neural = neural + self.sess(s)
            B = tf.shape(u)[0]
            r = x["rep_val"][..., : cfg.repeat_features]  # [B, R, F], zero rows for padding
            ridx = x["rep_idx"]  # [B, R], V = padding
            f = self.rep_o(self.rep_h(r))[..., 0] + cfg.rep_lin_scale * tf.tensordot(r, self.rep_lin_k, 1)
            r0 = tf.zeros((1, 1, cfg.repeat_features))
            f = f - self.rep_o(self.rep_h(r0))[..., 0]
            ic = tf.minimum(ridx, V - 1)
            f = f + r[..., 0] * tf.gather(self.rep_item[0], ic) + r[..., 1] * tf.gather(self.rep_item[1], ic)
            bought = tf.cast(ridx < V, tf.float32)
            dense = _scatter(tf, ridx, tf.stack([f, bought], axis=-1), B, V)  # [B, V, 2]
            logits = neural + g * dense[..., 0]
            if self.heat:
                has_hist = x["context"][:, -2:-1]  # layout: ..., log1p_baskets/5, has_history, session_len/16
                lh = x["heat"]  # [B, V] rows of the week's table, gathered in numpy
                # scalar weights enter through a matmul ([B·V, n] × [n]): its gradient is a GEMM, reproducible run
                # to run; a scalar × [B, V] product's gradient is a full reduction that was not (7th digit)
                logits = logits + tf.tensordot(tf.stack([lh, has_hist * lh], axis=-1),
                                               cfg.heat_scale * self.heat_w, 1)
            if self.nb_idx is not None:
                w = cfg.cooc_scale * self.cooc_theta
                cs = self._cooc(x["session_items"], x["session_weights"], B)
                ch = self._cooc(x["hist_items"], x["hist_weights"], B)
                logits = logits + tf.tensordot(tf.stack([cs, ch, cs * dense[..., 1]], axis=-1), w, 1)
            return logits, u

        def _cooc(self, items: Any, weights: Any, B: Any) -> Any:
            """Σ_k weights_k · cooc(items_k, ·) for 1-based item inputs (0 pads, weight 0)."""
            i = tf.maximum(items - 1, 0)
            idx = tf.gather(self.nb_idx, i)  # [B, L, K]
            val = tf.gather(self.nb_val, i) * weights[..., None]
            L, K = idx.shape[1], idx.shape[2]
            return _scatter(tf, tf.reshape(idx, [B, L * K]), tf.reshape(val, [B, L * K, 1]), B, V)[..., 0]

    m = Ranking()
    return m


def dense_batch(ex: Examples, sel: np.ndarray, V: int) -> dict[str, np.ndarray]:
    """The graph's numpy inputs for the selected examples (the repeat term is computed outside the graph)."""
    return {
        "hist_items": ex.hist_items[sel], "hist_weights": ex.hist_weights[sel],
        "session_items": ex.session_items[sel], "session_weights": ex.session_weights[sel],
        "context": ex.context[sel],
    }


def side_tables(prep: Prepared, last_week: int, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Heat (ln, per week) and co-occurrence tables from the training weeks only."""
    out: dict[str, np.ndarray] = {"heat_log_weeks": heat_log(heat_tables(prep, last_week))}  # the node needs it
    if cfg.cooc:
        out["cooc_idx"], out["cooc_val"] = cooc_neighbours(prep, last_week)
    return out


def train(prep: Prepared, ex: Examples, cfg: TrainConfig, progress: Any = None,
          last_week: int | None = None) -> Any:
    """Fit the network; ``last_week`` = the last training week (side tables use weeks <= it)."""
    tf = _tf()
    import keras

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    # Grappler's graph rewrites of the training step made the weights differ run to run in the 7th digit
    # (separate processes, same examples and seed; eager execution and the unoptimised graph were
    # bit-identical), and training amplifies that. The step runs unoptimised; the caller's options come back after.
    grappler = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        return _fit(tf, keras, prep, ex, cfg, progress, last_week)
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False, **grappler})


def _fit(tf: Any, keras: Any, prep: Prepared, ex: Examples, cfg: TrainConfig, progress: Any,
         last_week: int | None) -> Any:
    V = prep.vocab_size
    C = ex.context.shape[1]
    cnt = np.bincount(ex.target.ravel(), minlength=V + 1)[:V].astype(np.float64)  # training targets only
    log_pop = np.log(cnt + 1.0)
    lw = prep.split.train_last_week if last_week is None else last_week
    tables = side_tables(prep, lw, cfg)
    cooc = (tables["cooc_idx"], tables["cooc_val"]) if "cooc_idx" in tables else None
    model = build_model(V, C, attr_codes(prep), attr_sizes(prep), cfg, (log_pop - log_pop.mean()).astype(np.float32),
                        heat=tables["heat_log_weeks"] if cfg.heat else None, cooc=cooc)
    model.side_tables = tables
    opt = keras.optimizers.Adam(cfg.lr)
    week = ex.week if ex.week is not None else np.zeros(len(ex), np.int32)
    week = np.minimum(week, lw + 1).astype(np.int32)
    heat_tab = tables.get("heat_log_weeks", np.zeros((lw + 2, 1), np.float32))

    @tf.function(reduce_retracing=True)
    def step(hi: Any, hw: Any, si: Any, sw: Any, ctx: Any, ridx: Any, rval: Any, tgt: Any, heat: Any,
             seed: Any) -> Any:
        B = tf.shape(ctx)[0]
        t = _scatter(tf, tgt, tf.ones_like(tgt, tf.float32)[..., None], B, V)[..., 0]
        t = t / tf.maximum(tf.reduce_sum(t, axis=1, keepdims=True), 1.0)
        mask = tf.cast(tf.random.stateless_uniform([V], seed) >= cfg.id_dropout, tf.float32)
        x = {"hist_items": hi, "hist_weights": hw, "session_items": si, "session_weights": sw,
             "context": ctx, "rep_idx": ridx, "rep_val": rval, "heat": heat}
        with tf.GradientTape() as tape:
            logits, _ = model(x, training=True, mask=mask)
            loss = -tf.reduce_mean(tf.reduce_sum(t * tf.nn.log_softmax(logits), axis=1))
            total = loss + tf.add_n(model.losses) if model.losses else loss
        grads = tape.gradient(total, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(cfg.seed)
    N = len(ex)
    steps = 0
    for epoch in range(cfg.epochs):
        order = rng.permutation(N)
        batches = range(0, N, cfg.batch)
        it = progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}") if progress else batches
        losses = []
        for s in it:
            sel = order[s : s + cfg.batch]
            loss = step(ex.hist_items[sel], ex.hist_weights[sel], ex.session_items[sel],
                        ex.session_weights[sel], ex.context[sel], ex.rep_idx[sel], ex.rep_val[sel],
                        ex.target[sel], heat_tab[week[sel]], tf.constant([cfg.seed, steps], tf.int32))
            steps += 1
            losses.append(float(loss))
        log.info("epoch %d loss %.4f heat_w %s cooc_w %s repeat_linear %s", epoch + 1, float(np.mean(losses)),
                 np.round(cfg.heat_scale * model.heat_w.numpy(), 3) if cfg.heat else "-",
                 np.round(cfg.cooc_scale * model.cooc_theta.numpy(), 3),
                 np.round(cfg.rep_lin_scale * model.rep_lin_k.numpy(), 2))
    return model


def save_weights(model: Any, out: Path, cfg: TrainConfig, meta: dict[str, Any]) -> None:
    """Baked numpy weights (item tables folded) + config; what quantize/export need."""
    tin = model.in_table().numpy()
    tout, b = model.out_table()
    w: dict[str, np.ndarray] = {
        "in_table": tin, "out_table": tout.numpy(), "out_bias": b.numpy(), "rep_item": model.rep_item.numpy(),
    }
    w["repeat_linear_kernel"] = (cfg.rep_lin_scale * model.rep_lin_k.numpy())[:, None].astype(np.float32)
    w["repeat_linear_bias"] = np.zeros(1, np.float32)  # a constant per shopper: cancels in the ranking
    for name, layer in (("tower1", model.d1), ("tower2", model.d2), ("user", model.du), ("gate", model.dg),
                        ("repeat_mlp1", model.rep_h), ("repeat_mlp2", model.rep_o)):
        k, bb = layer.get_weights()
        w[f"{name}_kernel"] = k
        w[f"{name}_bias"] = bb
    for name, layer in (("wide", model.wide), ("session_out", model.sess)):
        if layer is not None:
            w[f"{name}_kernel"] = layer.get_weights()[0]
    for k in ATTRS:
        w[f"attr_out_{k}"] = model.attr_out[k].numpy()
        w[f"attr_b_{k}"] = model.attr_b[k].numpy()
    tables = getattr(model, "side_tables", {})
    if "heat_log_weeks" in tables:
        w["heat_log"] = tables["heat_log_weeks"][-1]  # the heat known right after the last training week
    if cfg.heat:
        w["heat_w"] = (cfg.heat_scale * model.heat_w.numpy()).astype(np.float32)
    if "cooc_idx" in tables:
        w["cooc_w"] = (cfg.cooc_scale * model.cooc_theta.numpy()).astype(np.float32)
        w["cooc_idx"], w["cooc_val"] = tables["cooc_idx"], tables["cooc_val"]
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **w)  # type: ignore[arg-type]
    (out / "train.json").write_text(json.dumps({"config": asdict(cfg), **meta}))


def node_inputs(C: int) -> tuple[Any, Any, Any, Any, Any]:
    """The node model's five inputs (hist_items, hist_weights, session_items, session_weights, context), batch 1:
    their names and shapes are the release's feature spec, which the node checks (one definition for every
    graph a release can hold: ``inference_model`` and ``models.ensemble``)."""
    _tf()
    import keras

    from edge.ranking.features import HIST_LEN, SESSION_LEN

    return (keras.Input((HIST_LEN,), batch_size=1, dtype="int32", name="hist_items"),
            keras.Input((HIST_LEN,), batch_size=1, name="hist_weights"),
            keras.Input((SESSION_LEN,), batch_size=1, dtype="int32", name="session_items"),
            keras.Input((SESSION_LEN,), batch_size=1, name="session_weights"),
            keras.Input((C,), batch_size=1, name="context"))


def inference_model(w: dict[str, np.ndarray], C: int, wide_in_graph: bool = False, bias_on_node: bool = True) -> Any:
    """The node's Keras model: same math as training (minus the sparse repeat term), item tables baked in."""
    _tf()
    import keras
    from keras import ops

    from edge.ranking.features import HIST_LEN

    V1, D = w["in_table"].shape
    V = V1 - 1
    hi, hw, si, sw, ctx = node_inputs(C)
    emb = keras.layers.Embedding(V1, D, name="item_in", embeddings_initializer=keras.initializers.Constant(
        w["in_table"]))
    # one GATHER for history and session: a second lookup would duplicate the table in the .tflite
    e = emb(keras.layers.Concatenate(axis=1)([hi, si]))
    w_all = ops.expand_dims(keras.layers.Concatenate(axis=1)([hw, sw]), -1)
    ew = e * w_all
    h = ops.sum(ew[:, :HIST_LEN, :], axis=1)
    s = ops.sum(ew[:, HIST_LEN:, :], axis=1)
    z = keras.layers.Concatenate()([h, s, ctx])
    d1 = keras.layers.Dense(w["tower1_bias"].shape[0], activation="relu", name="tower1")
    d2 = keras.layers.Dense(w["tower2_bias"].shape[0], activation="relu", name="tower2")
    du = keras.layers.Dense(D, name="user")
    dg = keras.layers.Dense(1, activation="softplus", name="repeat_gate")
    # the output bias (log popularity, ~8 nats wide) is added by the node in float (side file): outside
    # the int8 output it no longer stretches the output scale, and the file loses its int32 [V] bias
    dout = keras.layers.Dense(V, name="item_out", use_bias=not bias_on_node)
    z = d2(d1(z))
    u = du(z)
    g = dg(z)
    neural = dout(u)
    extra = []
    # The wide context → item path is a [C, V] matrix times a one-hot-ish context: as an int8
    # FULLY_CONNECTED it cost ~200 µs per invoke; the node adds it as a ~12-row gather from the side file.
    if "wide_kernel" in w and wide_in_graph:
        wide = keras.layers.Dense(V, use_bias=False, name="wide")
        neural = neural + wide(ctx)
        extra.append((wide, [w["wide_kernel"]]))
    if "session_out_kernel" in w:
        so = keras.layers.Dense(V, use_bias=False, name="session_out")
        neural = neural + so(s)
        extra.append((so, [w["session_out_kernel"]]))
    # The repeat term (g · f(repeat features) for the items this shopper bought) is not in the graph: the
    # node adds it in numpy for those ≤ 256 items (``edge.ranking.ranker``), from the side file. Inside
    # the graph it needed a [V, 4] input and a per-item MLP over all 10k rows: ~1 ms per invoke.
    model = keras.Model([hi, hw, si, sw, ctx], [neural, u, g], name="shelfcast_ranker")
    for layer, ws in extra:
        layer.set_weights(ws)
    d1.set_weights([w["tower1_kernel"], w["tower1_bias"]])
    d2.set_weights([w["tower2_kernel"], w["tower2_bias"]])
    du.set_weights([w["user_kernel"], w["user_bias"]])
    dg.set_weights([w["gate_kernel"], w["gate_bias"]])
    dout.set_weights([w["out_table"].T.copy()] if bias_on_node else [w["out_table"].T.copy(), w["out_bias"]])
    return model
