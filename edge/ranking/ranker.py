"""The node's ranker: int8 TFLite scoring of the whole catalogue, then re-ranking.

Stable API (the evaluation harness, signage, sync and the demo call only this)::

    r = Ranker.load()                       # bundled model; Ranker.load(path) for another release
    r.vocabulary                            # skus the model scores
    r.version                               # manifest version
    r.recommend(RecRequest(history=[(sku, when, quantity), ...], session=[sku, ...],
                           store_id=None, zone=None, when=None, profile=None, exclude=(), k=10))
    -> [Recommendation(sku, score, reason), ...]
    r.recommend_tuples(req)                 # the same answer as (sku, score, reason) tuples (the node's adapter)

Optional ``RecRequest`` fields: ``screen`` / ``session_id`` (frequency caps), ``session_append_only`` (the
caller only ever appends to ``session``), ``second_stage=False`` (the first stage alone, even when the release
ships a learned second stage: the recommend room's overload guard).

``Ranker.load`` verifies the manifest, the sha256 of the model (and side file)
and that the interpreter's inputs match the manifest's feature spec; any
mismatch raises ``ModelError`` naming it, so a bad release never replaces a
good one (build the new instance, then swap the reference).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from edge.ranking.features import (
    HIST_LEN,
    INPUT_NAMES,
    SESSION_LEN,
    ContextSpec,
    HistoryStructure,
    heat_log,
    history_inputs,
    history_structure,
    repeat_from_structure,
    repeat_matrix,
    repeat_template,
)
from edge.ranking.features import top_m as _top_m
from edge.ranking.stage2 import Stage2, load_stage2

__all__ = [
    "DEFAULT_MODEL_DIR",
    "ModelError",
    "Ranker",
    "RecRequest",
    "Recommendation",
    "RerankConfig",
    "make_interpreter",
]

log = logging.getLogger("shelfcast.ranking")
_LAST_TIME = 253_402_214_400.0  # 9999-12-31 00:00 UTC: a request time past it (or before 1970) is clamped to now

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "shipped"
MANIFEST_FORMAT = "shelfcast-ranker/1"
# concurrent visits whose parsed history is kept. 8 thrashed as soon as more checked-in shoppers interleaved:
# 32-120 shoppers picking round-robin cost 490-512 µs CPU a request with 8 and 363-374 µs with 128 (identical
# answers; +6 MB RSS for 120 visits, mostly stage 2's 40 kB position table per visit; 2026-12-01)
HIST_CACHE_VISITS = 128
SESSION_CACHE_VISITS = 256  # visits whose session state (``_session_state``) is kept
WIDE_MEMO = 64  # context vectors whose wide-path scores are kept (40 KB each)
OUT_MEMO = 64  # model input sets of shoppers without history whose outputs are kept (~10 KB each, ``_invoke``)


@dataclass(slots=True)
class _SessionState:
    """A visit's session as the ranker uses it, kept up to date pick by pick."""

    items: Sequence[Any]  # the session seen so far (a copy; empty while ``src`` is set)
    unknown: int  # entries not in the vocabulary
    last: dict[int, None]  # known picks (vocabulary index) by last occurrence, oldest first
    first: dict[int, None]  # known picks by first occurrence
    skus: set[Any]  # every entry, known or not (the exclusion set)
    # ``_reasons``' "because you picked up" per candidate for this state's distinct picks: (len(first) it
    # was made for, vocabulary index -> index into ``first`` or -1); replaced, never cleared, when a new
    # distinct pick arrives (a visit shows the same few items again and again)
    because: tuple[int, dict[int, int]] = (-1, {})
    n: int = 0  # session entries mapped so far
    src: Any = None  # the caller's own session list (``RecRequest.session_append_only``): no copy kept


@dataclass(frozen=True, slots=True)
class _PoolTerms:
    """What scoring only the catalogue pool needs (``catalogue_only``): the recommend path reads no other
    score, so the per-request work over the whole vocabulary (dequantize, the wide / base / tie adds) is done
    for the pool's few hundred items instead of 10k; the same operations per item, so the same numbers."""

    pool: np.ndarray  # the catalogue's vocabulary indices (``_catalogue_idx``), ascending
    base_src: tuple[np.ndarray | None, np.ndarray | None]  # the ``_base`` vectors these were taken from
    pos: np.ndarray  # [V] position in ``pool``, -1 outside it
    tie: np.ndarray  # ``_tie`` at the pool
    base: tuple[np.ndarray | None, np.ndarray | None]  # ``_base`` at the pool (cold, warm)


class ModelError(ValueError):
    """A model release the node must refuse; the message names the problem."""


@dataclass(frozen=True, slots=True)
class RecRequest:
    """What the node knows about one shopper right now.

    ``history``: (sku, when, quantity) lines of past baskets; lines with the same
    ``when`` form one basket; ``when`` is a datetime or Unix seconds.
    ``session``: skus picked up in this visit, oldest first. ``when``: local
    datetime of the request (None = now). ``profile``: demographic field -> value.
    ``screen`` / ``session_id``: key for frequency capping (optional).
    """

    history: Sequence[tuple[str, Any, float]] = ()
    session: Sequence[str] = ()
    store_id: str | None = None
    zone: str | None = None
    when: datetime | float | None = None
    profile: Mapping[str, Any] | None = None
    exclude: Collection[str] = ()
    k: int = 10
    screen: str | None = None
    session_id: str | None = None
    # the caller promises ``session`` is a list it only ever appends to (the recommend room's visit list): the
    # ranker then keeps a reference instead of a copy and maps only the new picks, with no O(visit length)
    # prefix check per request
    session_append_only: bool = False
    # False: the first stage alone, even when the release has a learned second stage (the recommend room's
    # overload guard: a request that already waited in a burst skips the re-ranker's ~0.1 ms)
    second_stage: bool = True
    # the store's promotion plan for the request's week: sku -> "display", "mailer" or "both" (unlisted skus:
    # not promoted). Read by a second stage trained with promotion columns only; pass the same mapping object
    # for every request of the week (it is converted once per object) and a new one when the plan changes
    promotions: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    sku: str
    score: float
    reason: str


_NO_USER = np.zeros(0, np.float32)  # ``_invoke``'s user vector when there are no new items to score with it
_new_object = object.__new__
_set_attr = object.__setattr__


def _recommendation(sku: str, score: float, reason: str) -> Recommendation:
    """``Recommendation(sku, score, reason)`` without the frozen dataclass's ``__init__`` (0.9 -> 0.35 us; ten
    per request): the same object, equal to one built the usual way."""
    r = _new_object(Recommendation)
    _set_attr(r, "sku", sku)
    _set_attr(r, "score", score)
    _set_attr(r, "reason", reason)
    return r


@dataclass
class RerankConfig:
    """Re-ranking knobs. ``diversity`` is the MMR weight (0 = pure score)."""

    diversity: float = 0.3
    repeat_cap: int = 3  # times one sku is shown to one (screen, session) before it is capped
    drop_session_items: bool = True  # just picked up: the shopper has it already
    new_items: bool = True  # score products outside the vocabulary from their attributes
    catalogue_only: bool = False  # only recommend skus given via set_products
    candidates: int = 40
    # a cold shopper (no history, no known pick) with a ``zone``: the zone's items (``set_zone_items``) get this
    # share of the request's stage-1 score span (max - min) added before top-k; 0 = off, 1 = they always lead
    cold_zone_blend: float = 0.0


def make_interpreter(model_bytes: bytes, threads: int = 1) -> Any:
    """LiteRT interpreter (``ai_edge_litert``), falling back to ``tflite_runtime``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - old images
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
    return Interpreter(model_content=model_bytes, num_threads=threads)


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _norm(v: Any) -> str:
    return str(v).strip().upper() if v is not None else ""


def _load_stage2(path: Path, digest: Any, ranker: Ranker) -> Stage2:
    """The release's stage-2 weights, verified like the model file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"stage-2 file {path} not found: it ships with the model") from None
    if sha256_bytes(data) != digest:
        raise ModelError(f"sha256 mismatch for {path.name} (truncated or corrupted; re-fetch)")
    try:
        return load_stage2(data, ranker)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelError(f"stage-2 file {path.name} is not usable: {exc}") from None


class Ranker:
    """Scores the vocabulary with the int8 model and re-ranks; thread-safe (one lock around invoke)."""

    def __init__(self, model_bytes: bytes, manifest: Mapping[str, Any], side: Mapping[str, np.ndarray], *,
                 path: Path | None = None, timezone: str = "America/New_York",
                 rerank: RerankConfig | None = None,
                 stock: Callable[[str], int | None] | None = None,
                 fallback: Any = None) -> None:
        self.manifest = dict(manifest)
        self.path = path
        self.version: str = str(manifest.get("version", "unknown"))
        self.vocabulary: tuple[str, ...] = tuple(str(s) for s in manifest["vocabulary"])
        self._index = {s: i for i, s in enumerate(self.vocabulary)}
        spec = manifest["feature_spec"]
        self.context_spec = ContextSpec.from_dict(spec["context"])
        self.tz = ZoneInfo(timezone)
        self.rerank = rerank or RerankConfig()
        self.stock = stock
        self.fallback = fallback  # optional PopularityRanker (zone × hour); else model popularity
        self.stats: dict[str, int] = {"requests": 0, "unknown_sku": 0, "clamped": 0, "fallback": 0,
                                      "bad_lines": 0, "new_item_recs": 0, "capped": 0, "out_of_stock": 0,
                                      "same_family": 0}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._caps: OrderedDict[tuple[str | None, str | None], dict[str, int]] = OrderedDict()
        self._promote: dict[str, float] = {}
        self._suppress: set[str] = set()
        self._suppress_cat: set[str] = set()
        self._names: dict[str, str] = {}
        self._catalogue: set[str] | None = None
        self._catalogue_idx: np.ndarray | None = None
        # the last few visits' history structures, by identity of the history object: shoppers'
        # requests interleave in a busy store, so one entry would thrash
        self._hist_cache: OrderedDict[int, tuple[Any, int, HistoryStructure | None, int]] = OrderedDict()
        # vocabulary masks for the vectorised candidate filter (rebuilt by set_rules / set_products)
        self._rule_block: np.ndarray | None = None  # suppressed skus and categories
        self._cat_block: np.ndarray | None = None  # outside the store catalogue
        self._promote_nonneg = True
        self._sess_cache: OrderedDict[str, _SessionState] = OrderedDict()  # by session_id
        self._tmpl_memo: dict[int, tuple[HistoryStructure, np.ndarray]] = {}  # _repeat_template's, by structure
        self._share_memo: dict[int, tuple[np.ndarray, np.ndarray, dict[int, float]]] = {}  # _reasons' share lookup
        self._cooc_memo: dict[bytes, tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = {}  # _cooc_terms' session part
        self._wide_memo: dict[bytes, np.ndarray] = {}  # context vector bytes -> wide-path scores (under _lock)
        # (hour, weekday, store, baskets, picks, profile id) -> (profile copy, quantized context input, clamp
        # count, wide-path scores); under _lock
        self._ctx_memo: dict[Any, tuple[dict[str, Any] | None, np.ndarray, int, np.ndarray | None]] = {}
        self._sess_lock = threading.Lock()
        self._capped_idx: dict[tuple[str | None, str | None], tuple[int, dict[str, int], list[int]]] = {}
        self._excl_memo: dict[tuple[str | None, str | None], tuple[set[Any], np.ndarray]] = {}  # _excluded_indices'
        self._capped_np: dict[tuple[str | None, str | None], tuple[list[int], int, np.ndarray]] = {}
        self._promote_mask: np.ndarray | None = None  # vocabulary mask of the promoted skus
        self._pop_order: list[tuple[str, float]] = []  # _popular_order's cache and its key
        self._pop_key: tuple[bool, int] | None = None
        self._catalogue_gen = 0  # bumped by set_products
        self._pool_terms: _PoolTerms | None = None  # ``_pool_scoring``'s, for the current pool and base vectors
        # the co-occurrence session part (``_cooc_memo``'s arrays) cut to the pool: id(indices) -> (indices,
        # pool, positions in the pool, values); holds the arrays, so their ids stay unique
        self._cooc_pool_memo: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._zone_items: dict[str, np.ndarray] = {}  # zone -> vocabulary indices (``set_zone_items``)
        # ``set_families``: vocabulary index -> family id (-1: no other variant), and the new items' ids by sku
        self._family: list[int] | None = None
        self._family_new: dict[str, int] = {}
        self._zone_pos: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # zone -> (pool, positions in it)
        # (session_items bytes, picks, quantized context bytes) -> (scores, user vector) of the model, for
        # shoppers without history (``_invoke``; under _lock)
        self._out_memo: dict[tuple[bytes, int, bytes], tuple[np.ndarray, np.ndarray]] = {}
        self._hour_memo: tuple[float, float, int, int] = (0.0, 0.0, 0, 0)  # ``_when``'s: (lo, hi, hour, weekday)

        try:
            self._it = make_interpreter(model_bytes)
            self._it.allocate_tensors()
        except Exception as exc:
            raise ModelError(f"not a valid TFLite model ({type(exc).__name__}: {str(exc)[:120]}); "
                             "the file is truncated or corrupted: re-fetch the release") from None
        self._check_io(spec)
        V = len(self.vocabulary)
        self.V = V
        # side data
        self.category = np.asarray(side["category"], np.int32)
        self.popularity = np.asarray(side["popularity"], np.float32)
        emb = np.asarray(side["item_emb"], np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-6)
        self.item_emb = emb
        self.attr_values: dict[str, list[str]] = {k: list(v) for k, v in manifest["attributes"].items()
                                                  if k != "price_band_edges"}
        self.price_edges = np.asarray(manifest["attributes"].get("price_band_edges", []), np.float64)
        self._attr_out = {k: np.asarray(side[f"attr_out_{k}"], np.float32) for k in
                          ("dept", "cat", "ptype", "brand", "price_band")}
        self._attr_b = {k: np.asarray(side[f"attr_b_{k}"], np.float32) for k in
                        ("dept", "cat", "ptype", "brand", "price_band")}
        self._cat_names = list(manifest["attributes"].get("category", []))
        try:
            self._rw1 = np.asarray(side["repeat_mlp1_kernel"], np.float32)
            self._rb1 = np.asarray(side["repeat_mlp1_bias"], np.float32)
            self._rw2 = np.asarray(side["repeat_mlp2_kernel"], np.float32)[:, 0]
            self._rb2 = float(np.asarray(side["repeat_mlp2_bias"])[0])
            self._rwl = np.asarray(side["repeat_linear_kernel"], np.float32)[:, 0]
            self._rbl = float(np.asarray(side["repeat_linear_bias"])[0])
            self._ritem = np.asarray(side["rep_item"], np.float32)
        except KeyError as exc:
            raise ModelError(f"side file lacks {exc}: re-export the model") from None
        if self._ritem.shape != (2, V):
            raise ModelError(f"side file repeat weights cover {self._ritem.shape[1]} items, vocabulary has {V}")
        self._wide_q = np.asarray(side["wide_q"]) if "wide_q" in side else None
        # float copy once at load: the hot path gathers a few rows of it per request (no per-call astype)
        self._wide_f = self._wide_q.astype(np.float32) if self._wide_q is not None else None
        self._wide_scale = np.asarray(side["wide_scale"], np.float32) if "wide_scale" in side else None
        if self._wide_q is not None and self._wide_q.shape != (self.context_spec.size, V):
            raise ModelError(f"side file wide path has shape {list(self._wide_q.shape)}, expected "
                             f"[{self.context_spec.size}, {V}]")
        self._rep0 = float(np.maximum(self._rb1, 0) @ self._rw2) + self._rb2 + self._rbl
        self._rep_f = int(self._rw1.shape[0])  # repeat features this model was trained on (a prefix of the rows)
        # node-side terms of v3 models (absent in older side files: then nothing is added)
        self._out_bias = np.asarray(side["out_bias"], np.float32) if "out_bias" in side else None
        self._heat_w = np.asarray(side["heat_w"], np.float32) if "heat_w" in side else None
        self._heat = np.asarray(side["heat_log"], np.float32) if "heat_log" in side else None
        self._bought_mask = np.zeros(V, bool)
        self._nb_idx: np.ndarray | None = None
        self._nb_val: np.ndarray | None = None
        self._cooc_w: np.ndarray | None = None
        if "cooc_idx" in side:
            self._nb_idx = np.asarray(side["cooc_idx"]).astype(np.intp)
            self._nb_val = np.asarray(side["cooc_val"], np.float32) * float(np.asarray(side.get("cooc_val_scale", 1.0)))
            self._cooc_w = np.asarray(side["cooc_w"], np.float32)
            if self._nb_idx.shape[0] != V or self._nb_val.shape != self._nb_idx.shape:
                raise ModelError(f"side file co-occurrence table has shape {list(self._nb_idx.shape)}, "
                                 f"vocabulary has {V} items")
        for name, arr in (("out_bias", self._out_bias), ("heat_log", self._heat)):
            if arr is not None and arr.shape != (V,):
                raise ModelError(f"side file {name} has shape {list(arr.shape)}, expected [{V}]")
        rr = manifest.get("rerank", {})
        self.cold_pop_blend = float(rr.get("cold_pop_blend", 0.0))  # + β ln(1 + popularity) with no history
        # demographics in the context input of a shopper without history (absent: yes, as every release before v6)
        self.cold_profile = bool(rr.get("cold_profile", True))
        # validation-tuned multipliers on the learned heat / co-occurrence weights (the softmax-trained weights
        # are calibrated for the whole basket distribution; the top 10 gained from sharper ones)
        if self._heat_w is not None:
            self._heat_w = self._heat_w * np.float32(rr.get("heat_mult", 1.0))
        self._cooc_w_cold: np.ndarray | None = None
        if self._cooc_w is not None:
            learned = self._cooc_w
            self._cooc_w = learned * np.asarray(rr.get("cooc_mult", [1.0, 1.0, 1.0]), np.float32)
            # shoppers without history (P3b on validation) preferred a smaller session weight than P2's
            self._cooc_w_cold = learned * np.asarray(rr.get("cooc_mult_cold", rr.get("cooc_mult", [1.0, 1.0, 1.0])),
                                                     np.float32)
        self._base: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        self._rebuild_base()
        self._new_skus: list[str] = []
        self._new_W = np.zeros((0, emb.shape[1]), np.float32)
        self._new_b = np.zeros(0, np.float32)
        self._new_cat = np.zeros(0, np.int32)
        self._tie = -np.linspace(0.0, 1e-3, V, dtype=np.float32)
        # post-model blend with the shopper's own repeat features (tuned on the validation split)
        blend = manifest.get("rerank", {}).get("repeat_blend")
        self.repeat_blend = np.asarray(blend, np.float32) if blend is not None else None
        self._stage2: Stage2 | None = None  # set by ``load`` when the release ships stage2.npz
        # the repeat rows ``_invoke`` made last, with the repeat features they were made from: stage 2 takes
        # them when ``rep`` is its request's (identity; another thread's request just misses)
        self._last_repeat: tuple[Any, np.ndarray] | None = None
        # (repeat features, positions of the top HIST_LEN items, their neighbour indices (raveled) and values):
        # what ``_cooc_terms`` gathered for the history part, taken by stage 2 when ``rep`` is its request's
        self._last_hist: tuple[Any, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _rebuild_base(self) -> None:
        """Per-item float vectors added to every request's scores, (no history, with history):
        output bias + heat term (+ the cold popularity blend); made once, not per request."""
        V = self.V
        parts_cold: list[np.ndarray] = []
        parts_warm: list[np.ndarray] = []
        if self._out_bias is not None:
            parts_cold.append(self._out_bias)
            parts_warm.append(self._out_bias)
        if self._heat is not None and self._heat_w is not None:
            parts_cold.append(float(self._heat_w[0]) * self._heat)
            parts_warm.append(float(self._heat_w[0] + self._heat_w[1]) * self._heat)
        if self.cold_pop_blend:
            parts_cold.append(self.cold_pop_blend * np.log1p(self.popularity))

        def total(parts: list[np.ndarray]) -> np.ndarray | None:
            if not parts:
                return None
            out = np.zeros(V, np.float32)
            for x in parts:
                out += x
            return out

        self._base = (total(parts_cold), total(parts_warm))

    def set_item_heat(self, counts: Mapping[str, float] | np.ndarray) -> None:
        """Refresh the item sales heat: distinct baskets per sku in the last 14 days (a mapping sku ->
        count, or a [V] array in vocabulary order). Skus not given count 0. No-op for models without it."""
        if isinstance(counts, Mapping):
            arr = np.zeros(self.V, np.float64)
            for sku, c in counts.items():
                i = self._index.get(str(sku), -1)
                if i >= 0:
                    arr[i] = float(c)
        else:
            arr = np.asarray(counts, np.float64)
            if arr.shape != (self.V,):
                raise ValueError(f"heat has shape {list(arr.shape)}, expected [{self.V}]")
        self._heat = heat_log(arr)
        self._rebuild_base()

    # -- loading -----------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None, manifest: str | Path | None = None, **kw: Any) -> Ranker:
        """Load and verify a model: ``path`` = .tflite file or a directory holding model.tflite + manifest.json."""
        p = Path(path) if path is not None else DEFAULT_MODEL_DIR
        model_path = p / "model.tflite" if p.is_dir() else p
        man_path = Path(manifest) if manifest is not None else model_path.with_name("manifest.json")
        if not model_path.exists():
            raise ModelError(f"model file {model_path} not found: install a release or point model.path at one")
        try:
            man = json.loads(man_path.read_text())
        except FileNotFoundError:
            raise ModelError(f"manifest {man_path} not found: a model ships with its manifest.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"manifest {man_path} is not valid JSON ({exc}): re-fetch the release") from None
        if man.get("format") != MANIFEST_FORMAT:
            raise ModelError(f"manifest format {man.get('format')!r} is not {MANIFEST_FORMAT!r}: "
                             "this node cannot run that release")
        for key in ("sha256", "vocabulary", "feature_spec", "attributes", "side_file"):
            if key not in man:
                raise ModelError(f"manifest {man_path} lacks {key!r}: re-export the model")
        data = model_path.read_bytes()
        digest = sha256_bytes(data)
        if digest != man["sha256"]:
            raise ModelError(f"sha256 mismatch for {model_path.name}: file {digest[:12]}…, manifest "
                             f"{str(man['sha256'])[:12]}… (truncated or corrupted; re-fetch the release)")
        side_path = model_path.with_name(man["side_file"])
        try:
            side_bytes = side_path.read_bytes()
        except FileNotFoundError:
            raise ModelError(f"side file {side_path} not found: it ships with the model") from None
        if sha256_bytes(side_bytes) != man.get("side_sha256"):
            raise ModelError(f"sha256 mismatch for {side_path.name} (truncated or corrupted; re-fetch)")
        import io

        with np.load(io.BytesIO(side_bytes)) as z:
            side = {k: z[k] for k in z.files}
        r = cls(data, man, side, path=model_path, **kw)
        if man.get("stage2_file"):  # the learned re-ranker (absent in v3 releases: stage 1 alone)
            r._stage2 = _load_stage2(model_path.with_name(man["stage2_file"]), man.get("stage2_sha256"), r)
        return r

    def _check_io(self, spec: Mapping[str, Any]) -> None:
        try:
            details = self._it.get_input_details()
            outs = self._it.get_output_details()
        except Exception as exc:  # pragma: no cover
            raise ModelError(f"cannot read the model's inputs: {exc}") from None
        by_name: dict[str, Any] = {}
        for d in details:
            for n in INPUT_NAMES:
                if d["name"] == n or d["name"].endswith(f"_{n}:0") or d["name"].startswith(f"serving_default_{n}"):
                    by_name[n] = d
        self._in: dict[str, tuple[int, np.ndarray, float, int]] = {}
        want = {d["name"]: d for d in spec["inputs"]}
        for n in INPUT_NAMES:
            if n not in want:
                raise ModelError(f"feature spec lacks input {n!r}: re-export the model")
            d = by_name.get(n)
            if d is None:
                raise ModelError(f"model has no input {n!r} (has {[x['name'] for x in details]})")
            w = want[n]
            if list(d["shape"]) != list(w["shape"]):
                raise ModelError(f"input {n!r} has shape {list(d['shape'])} but the feature spec says "
                                 f"{list(w['shape'])}")
            if np.dtype(d["dtype"]).name != w["dtype"]:
                raise ModelError(f"input {n!r} has dtype {np.dtype(d['dtype']).name} but the feature spec "
                                 f"says {w['dtype']}")
            scale, zp = d["quantization"]
            buf = np.zeros(d["shape"], d["dtype"])
            self._in[n] = (d["index"], buf, float(scale), int(zp))
            self._it.set_tensor(d["index"], buf)  # defined inputs before the first request
        V = len(self.vocabulary)
        # the node fills the history and session inputs to its own widths: a release trained for others (e.g.
        # `model train` with a longer history) would load and then fail every request at set_tensor
        for n, width, const in (("hist_items", HIST_LEN, "HIST_LEN"), ("hist_weights", HIST_LEN, "HIST_LEN"),
                                ("session_items", SESSION_LEN, "SESSION_LEN"),
                                ("session_weights", SESSION_LEN, "SESSION_LEN")):
            got = self._in[n][1].shape[-1]
            if got != width:
                raise ModelError(f"input {n!r} is {got} wide but this node fills {width} ({const} in "
                                 "edge/ranking/features.py): the release was built for another node version; "
                                 "publish one built by this version's `shelfcast model`")
        if self._in["context"][1].shape[-1] != self.context_spec.size:
            raise ModelError(f"input 'context' has {self._in['context'][1].shape[-1]} values but the context "
                             f"spec describes {self.context_spec.size}")
        out_scores: dict[str, Any] | None = None
        out_user: dict[str, Any] | None = None
        out_gate: dict[str, Any] | None = None
        two_d = [o for o in outs if len(o["shape"]) == 2 and int(o["shape"][1]) > 1]
        for o in outs:
            if [int(x) for x in o["shape"]] == [1, 1]:
                out_gate = o
        if len(two_d) == 2:  # scores = the wider one (vocabulary), user vector = the other
            out_scores, out_user = sorted(two_d, key=lambda o: -int(o["shape"][1]))
        if out_scores is not None and int(out_scores["shape"][1]) != V:
            raise ModelError(f"model scores {int(out_scores['shape'][1])} items but the manifest vocabulary "
                             f"has {V}")
        if out_scores is None or out_user is None or out_gate is None:
            raise ModelError(f"model outputs {[list(o['shape']) for o in outs]} are not scores [1, {V}], "
                             "a user vector and a repeat gate [1, 1]")
        self._out_scores: dict[str, Any] = out_scores
        # the dequantized score of each int8 output value, by its byte: ``(q - zp) * scale`` in float32 made
        # as ``_invoke`` makes it for the whole vocabulary (the same two operations per value: the same floats)
        self._deq_lut: np.ndarray | None = None
        o_scale, o_zp = out_scores["quantization"]
        if o_scale and np.dtype(out_scores["dtype"]) == np.int8:
            lut = np.subtract(np.arange(256, dtype=np.uint8).view(np.int8), o_zp, dtype=np.float32)
            lut *= o_scale
            self._deq_lut = lut
        self._out_user: dict[str, Any] = out_user
        self._out_gate: dict[str, Any] = out_gate
        self.quantized = np.dtype(self._in["context"][1].dtype) == np.int8
        self._scratch = (np.zeros(HIST_LEN, np.int32), np.zeros(HIST_LEN, np.float32),
                         np.zeros(SESSION_LEN, np.int32), np.zeros(SESSION_LEN, np.float32),
                         np.zeros(self.context_spec.size, np.float32))
        # the session_weights input for 0..SESSION_LEN picks (1/n each, as session_inputs fills them), quantized
        # once by ``_set`` here instead of on every request
        self._sw_q: list[np.ndarray] = []
        for picks in range(SESSION_LEN + 1):
            w = np.zeros(SESSION_LEN, np.float32)
            if picks:
                w[:picks] = 1.0 / picks
            self._set("session_weights", w, zero=not picks)
            self._sw_q.append(self._in["session_weights"][1].copy())
        # what the interpreter's input tensors hold now, as ``_invoke`` last set them (empty: set them all)
        self._fed: dict[str, Any] = {}

    # -- configuration ------------------------------------------------------
    def set_stock_lookup(self, fn: Callable[[str], int | None] | None) -> None:
        """Units on the shelf per sku (None = unknown, kept); <= 0 is removed."""
        self.stock = fn

    def set_rules(self, promote: Mapping[str, float] | None = None, suppress: Iterable[str] = (),
                  suppress_categories: Iterable[str] = ()) -> None:
        """Promote skus (score boost in logit units) and suppress skus or whole categories."""
        self._promote = dict(promote or {})
        self._suppress = set(suppress)
        self._suppress_cat = {_norm(c) for c in suppress_categories}
        self._promote_nonneg = all(v >= 0 for v in self._promote.values())
        pm = np.zeros(len(self.vocabulary), bool)
        for sku in self._promote:
            i = self._index.get(sku, -1)
            if i >= 0:
                pm[i] = True
        self._promote_mask = pm
        block = np.zeros(len(self.vocabulary), bool)
        for sku in self._suppress:
            i = self._index.get(sku, -1)
            if i >= 0:
                block[i] = True
        if self._suppress_cat:
            bad = [j for j, name in enumerate(self._cat_names) if name in self._suppress_cat]
            if bad:
                block |= np.isin(self.category, bad)
        self._rule_block = block if block.any() else None

    def set_products(self, products: Iterable[Mapping[str, Any] | Any], *, catalogue_only: bool | None = None) -> int:
        """Product attributes (sku, name, department, category, product_type, brand, price).

        Skus outside the vocabulary become new items scored from their attributes.
        Returns how many new items were added.
        """
        new_skus, rows = [], []
        catalogue = set()
        for p in products:
            g = p.get if isinstance(p, Mapping) else (lambda k, _p=p: getattr(_p, k, None))
            sku = str(g("sku"))
            catalogue.add(sku)
            if g("name"):
                self._names[sku] = str(g("name"))
            if sku in self._index:
                continue
            codes = {
                "dept": self._code("department", g("department")),
                "cat": self._code("category", g("category")),
                "ptype": self._code("product_type", g("product_type")),
                "brand": self._code("brand", g("brand")),
                "price_band": self._price_band(g("price")),
            }
            new_skus.append(sku)
            rows.append(codes)
        D = self.item_emb.shape[1]
        W = np.zeros((len(rows), D), np.float32)
        b = np.zeros(len(rows), np.float32)
        for i, c in enumerate(rows):
            for k, code in c.items():
                W[i] += self._attr_out[k][code]
                b[i] += self._attr_b[k][code]
        self._new_skus, self._new_W, self._new_b = new_skus, W, b
        self._new_cat = np.array([c["cat"] - 1 for c in rows], np.int32)
        if catalogue_only is not None:
            self.rerank.catalogue_only = catalogue_only
        self._catalogue = catalogue
        self._catalogue_gen += 1
        self._catalogue_idx = np.array(sorted(self._index[x] for x in catalogue if x in self._index), np.int64)
        cat_block = np.ones(len(self.vocabulary), bool)
        cat_block[self._catalogue_idx] = False
        self._cat_block = cat_block
        return len(new_skus)

    def _code(self, attr: str, value: Any) -> int:
        vals = self.attr_values.get(attr, [])
        try:
            return vals.index(_norm(value)) + 1
        except ValueError:
            return 0

    def _price_band(self, price: Any) -> int:
        try:
            f = float(price)
        except (TypeError, ValueError):
            return len(self.price_edges) + 1
        if not math.isfinite(f):
            return len(self.price_edges) + 1
        return int(np.searchsorted(self.price_edges, f))

    # -- scoring ------------------------------------------------------------
    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg)

    def _when(self, when: datetime | float | None) -> tuple[float, int, int]:
        """(unix seconds, local hour, local weekday); bad values clamp to now."""
        if isinstance(when, datetime):
            dt = when if when.tzinfo is not None else when.replace(tzinfo=self.tz)
            return dt.timestamp(), when.hour, when.weekday()
        t = time.time()
        if when is not None:
            try:
                f = float(when)
                if math.isfinite(f) and 0.0 <= f < _LAST_TIME:
                    t = f
                else:
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                self.stats["clamped"] += 1
                self._warn_once("when", f"request time {when!r} is not a time; using now")
        lo, hi, hour, wd = self._hour_memo
        if lo <= t < hi:
            return t, hour, wd
        dt = datetime.fromtimestamp(t, self.tz)
        self._hour_memo = self._local_hour(t, dt)
        return t, dt.hour, dt.weekday()

    def _local_hour(self, t: float, dt: datetime) -> tuple[float, float, int, int]:
        """(lo, hi, hour, weekday): Unix seconds ``lo <= t < hi`` all in ``dt``'s local hour, for ``_when``'s
        memo (``datetime.fromtimestamp`` with a ZoneInfo costs ~3 us a request). A ms inside the hour's ends
        (``dt`` is rounded to the microsecond); empty unless both ends have ``dt``'s date, hour and UTC offset
        (a DST change within the hour)."""
        start = t - (dt.minute * 60 + dt.second + dt.microsecond * 1e-6)
        lo, hi = start + 1e-3, start + 3600.0 - 1e-3
        want = (dt.date(), dt.hour, dt.utcoffset())
        for end in (lo, hi):
            e = datetime.fromtimestamp(end, self.tz)
            if (e.date(), e.hour, e.utcoffset()) != want:
                return (0.0, 0.0, 0, 0)
        return (lo, hi, dt.hour, dt.weekday())

    def _history(self, history: Sequence[tuple[str, Any, float]]) -> HistoryStructure | None:
        """Baskets and items of the history; cached for the same history object (a visit's profile
        history is the same tuple on every request of that visit)."""
        cache = self._hist_cache
        hit = cache.get(id(history))
        if hit is not None and hit[0] is history and hit[1] == len(history):
            cache.move_to_end(id(history))
            self.stats["unknown_sku"] += hit[3]
            return hit[2]
        try:  # fast path: well-formed lines with numeric times
            get = self._index.get
            n = len(history)
            idx = np.fromiter(map(get, map(itemgetter(0), history), repeat(-1, n)), np.int64, n)
            td = np.fromiter(map(itemgetter(1), history), np.float64, n) / 86400.0
            if not np.isfinite(td).all():
                raise ValueError
            unknown = int((idx < 0).sum())
        except (TypeError, ValueError, IndexError):
            idx, td, unknown = self._history_slow(history)
        self.stats["unknown_sku"] += unknown
        st = history_structure(idx, td)
        cache[id(history)] = (history, len(history), st, unknown)  # holds the object: its id stays unique
        cache.move_to_end(id(history))
        if len(cache) > HIST_CACHE_VISITS:
            cache.popitem(last=False)
        return st

    def _repeat_template(self, st: HistoryStructure | None, rep: Any) -> np.ndarray | None:
        """``features.repeat_template`` for the visit's history structure, made on its first request; None
        when ``rep`` does not hold the structure's own items (more than MAX_REPEAT_ITEMS: cut per request)."""
        if st is None or rep.items is not st.items or rep.share is not st.share32:
            return None
        ent = self._tmpl_memo.get(id(st))
        if ent is None or ent[0] is not st:
            ent = (st, repeat_template(rep))
            self._tmpl_memo[id(st)] = ent  # holds ``st``: its id stays unique while the entry lives
            if len(self._tmpl_memo) > HIST_CACHE_VISITS:
                self._tmpl_memo.pop(next(iter(self._tmpl_memo)), None)
        return ent[1]

    def _history_slow(self, history: Sequence[tuple[str, Any, float]]) -> tuple[np.ndarray, np.ndarray, int]:
        n = len(history)
        idx = np.empty(n, np.int64)
        td = np.empty(n, np.float64)
        get = self._index.get
        m = 0
        unknown = 0
        for line in history:
            try:
                sku, when = line[0], line[1]
                if isinstance(when, datetime):
                    w = (when if when.tzinfo is not None else when.replace(tzinfo=self.tz)).timestamp()
                else:
                    w = float(when)
                if not math.isfinite(w):
                    raise ValueError
            except (TypeError, ValueError, IndexError):
                self.stats["bad_lines"] += 1
                continue
            i = get(sku if isinstance(sku, str) else str(sku), -1)
            if i < 0:
                unknown += 1
            idx[m] = i
            td[m] = w / 86400.0
            m += 1
        return idx[:m], td[:m], unknown

    def _set(self, name: str, values: np.ndarray, zero: bool = False) -> None:
        """Quantize ``values`` (float32 [n], overwritten) into the preallocated input buffer, in place.
        ``zero``: the caller knows ``values`` is all 0 (no history, no picks): the buffer is the clipped
        zero point, what the arithmetic below gives for 0, without four numpy calls."""
        index, buf, scale, zp = self._in[name]
        if buf.dtype == np.int8:
            if zero:
                buf.fill(min(max(zp, -128), 127))
            else:
                np.divide(values, scale, out=values)
                np.rint(values, out=values)
                values += zp
                # np.clip's Python wrapper costs ~3 us on 16 values; the two ufuncs give the same numbers
                np.minimum(values, 127, out=values)
                np.maximum(values, -128, out=values)
                buf[0] = values  # unsafe cast of integral values in [-128, 127]: same as astype(int8)
        else:
            buf[0] = values
        self._it.set_tensor(index, buf)

    def _invoke(self, req: RecRequest, pt: _PoolTerms | None = None
                ) -> tuple[np.ndarray, np.ndarray, Any, list[int], _SessionState]:
        """(scores [V], new-item user vector, repeat features, distinct picks, session state). With ``pt``
        (``_pool_scoring``) the scores are those of ``pt.pool`` only, [len(pool)], in pool order."""
        t, hour, wd = self._when(req.when)
        hst = self._history(req.history)
        rep = repeat_from_structure(hst, t / 86400.0)
        ss = self._session_state(req)
        self.stats["unknown_sku"] += ss.unknown
        sess_idx = list(ss.first)  # the distinct picks, first occurrence first: all _reasons looks at
        # the latest SESSION_LEN distinct picks, newest first, as session_items values (index + 1): all
        # session_inputs looks at (``last`` holds each pick once, by last occurrence; a visit can hold thousands).
        # One list into the buffer: a reversed copy, the assignment and ``+= 1`` cost ~4 us, this ~1 us
        newest = [i + 1 for i in islice(reversed(ss.last), SESSION_LEN)]
        with self._lock:  # the scratch buffers are shared: fill, invoke and read under the lock
            hi, hw, si, sw, ctx = self._scratch
            hi.fill(0)
            hw.fill(0.0)
            si.fill(0)
            sw.fill(0.0)
            top_h = history_inputs(rep, hi, hw)
            # ``session_inputs`` for a list that holds each pick once, oldest first, at most SESSION_LEN
            ns = len(newest)
            if ns:
                si[:ns] = newest
                sw[:ns] = 1.0 / ns
            # the context input (and the wide path, which depends on it only) repeats from request to request:
            # memoised by what it is made of, as the quantized input buffer, its clamp count and wide scores
            # a release may leave the demographics out for a shopper without history (``rerank.cold_profile``)
            prof = req.profile if self.cold_profile or rep.n_baskets > 0 else None
            try:
                ckey: Any = (hour, wd, req.store_id, rep.n_baskets, ns, 0 if prof is None else id(prof))
                ent = self._ctx_memo.get(ckey)
            except TypeError:  # an unhashable store id: no memo
                ckey, ent = None, None
            if ent is not None and ent[0] == prof:  # a copy of the profile: a dict changed in place misses
                _, qctx, bad, wide = ent
            else:
                ctx.fill(0.0)
                bad = self.context_spec.encode(ctx, hour, wd, req.store_id, prof, rep.n_baskets, ns)
                wide = self._wide(ctx)
                self._set("context", ctx)  # quantizes ``ctx`` in place
                qctx = self._in["context"][1].copy()
                if ckey is not None:
                    if len(self._ctx_memo) >= WIDE_MEMO:
                        self._ctx_memo.pop(next(iter(self._ctx_memo)))
                    self._ctx_memo[ckey] = (None if prof is None else dict(prof), qctx, bad, wide)
            cooc = None
            if self._nb_idx is not None and self._nb_val is not None and self._cooc_w is not None:
                cooc = self._cooc_terms(rep, hi, hw, si, sw, ns, top_h)  # before ``_set`` quantizes hw / sw
            # the user vector scores new items only, the gate weighs the shopper's own items only: read (copied
            # out) only when they are used
            want_user = bool(self.rerank.new_items and len(self._new_skus))
            sib = si.tobytes()
            # a shopper without history: the model's inputs are the picks and the context only, and a visit comes
            # back to the same ones (a shelf's picks cycling over its slots, a re-rank without a new pick): the
            # outputs of the last few such input sets are kept, by their exact bytes (the same invoke, skipped)
            okey = None if len(rep.items) else (sib, ns, qctx.tobytes())
            hit = self._out_memo.get(okey) if okey is not None else None
            if hit is not None:
                out, user = hit
                if not want_user:
                    user = _NO_USER
                gate = _NO_USER
            else:
                # an input tensor keeps what was set until it is set again: inputs equal to the last request's
                # (no history, the same picks, a memoised context) are not copied in again
                fed = self._fed
                if len(rep.items) or not fed.get("no_history"):
                    self._it.set_tensor(self._in["hist_items"][0], hi[None, :])
                    self._set("hist_weights", hw, zero=not len(rep.items))
                    fed["no_history"] = not len(rep.items)
                if fed.get("session_items") != sib:
                    self._it.set_tensor(self._in["session_items"][0], si[None, :])
                    fed["session_items"] = sib
                if fed.get("session_weights") != ns:
                    self._it.set_tensor(self._in["session_weights"][0], self._sw_q[ns])  # quantized 1/ns weights
                    fed["session_weights"] = ns
                if fed.get("context") is not qctx:
                    self._it.set_tensor(self._in["context"][0], qctx)
                    fed["context"] = qctx
                self._it.invoke()
                out = self._it.get_tensor(self._out_scores["index"])[0]
                if okey is not None:  # kept with the user vector (copies: nothing downstream writes into them)
                    user = self._it.get_tensor(self._out_user["index"])[0]
                    if len(self._out_memo) >= OUT_MEMO:
                        self._out_memo.pop(next(iter(self._out_memo)))
                    self._out_memo[okey] = (out, user)
                    if not want_user:
                        user = _NO_USER
                else:
                    user = self._it.get_tensor(self._out_user["index"])[0] if want_user else _NO_USER
                gate = self._it.get_tensor(self._out_gate["index"])[0] if len(rep.items) else _NO_USER
        if bad:
            self.stats["clamped"] += bad
            self._warn_once("context", "unknown or out-of-range context values (profile/hour/weekday) "
                                       "were clamped to 'unknown'")
        scale, zp = self._out_scores["quantization"]
        if pt is not None:  # the pool's scores only (``_pool_scoring``): the same operations on fewer items
            out = out.take(pt.pool)
        if pt is not None and self._deq_lut is not None and out.dtype == np.int8:
            scores = self._deq_lut.take(out.view(np.uint8))  # a few hundred: one gather beats two passes
        elif scale:  # the one per-call copy of the scores: the cast and the zero point in one pass, then in place
            scores = np.subtract(out, zp, dtype=np.float32)
            scores *= scale
        else:
            scores = out.astype(np.float32)
        if wide is not None:
            scores += wide if pt is None else wide.take(pt.pool)
        base = (self._base if pt is None else pt.base)[1 if rep.n_baskets > 0 else 0]
        if base is not None:
            scores += base
        if cooc is not None:  # a sparse add (≤ 48 × K entries): ~4x cheaper than a dense bincount + add
            for n_part, (ix, vx) in enumerate(cooc):  # in order: each score sums its terms in the same sequence
                if pt is not None:  # as one add.at; cut to the pool (a subsequence: the same order per item)
                    ix, vx = self._cooc_in_pool(pt, ix, vx, n_part == 0 and ns > 0)
                np.add.at(scores, ix, vx)
        if len(rep.items):
            own_idx: np.ndarray | None = rep.items
            sel: np.ndarray | None = None
            if pt is not None:
                p_own = pt.pos.take(rep.items)
                sel = p_own >= 0
                own_idx = p_own[sel] if sel.any() else None
        else:
            own_idx = None
        if own_idx is not None:
            gs, gz = self._out_gate["quantization"]
            g = float((float(gate[0]) - gz) * gs) if gs else float(gate[0])
            rfull = repeat_matrix(rep, self._repeat_template(hst, rep))
            self._last_repeat = (rep, rfull)  # for stage 2 (``recommend``), which reads the same rows
            rmat = rfull[:, : self._rep_f]
            f = np.maximum(rmat @ self._rw1 + self._rb1, 0.0) @ self._rw2 + self._rb2 + rmat @ self._rwl + self._rbl
            ri = self._ritem.take(rep.items, 1)  # one gather for both rows; column 0 ("bought") is exactly 1.0
            f += ri[0] + rmat[:, 1] * ri[1]
            # the shopper's items gathered once, both terms added in the same order, scattered once (distinct
            # indices: the same numbers as two fancy-index ``+=``); in pool mode the rows of pool items only
            # (made for all rows, then selected: the same per-row numbers)
            bl = rfull[:, : len(self.repeat_blend)] @ self.repeat_blend if self.repeat_blend is not None else None
            if sel is not None:
                f = f[sel]
                bl = bl[sel] if bl is not None else None
            own = scores.take(own_idx)  # take / put: the same elements as fancy indexing, less overhead
            own += g * (f - self._rep0)
            if bl is not None:
                own += bl
            scores.put(own_idx, own)
        if want_user:
            uscale, uzp = self._out_user["quantization"]
            u = (user.astype(np.float32) - uzp) * uscale if uscale else user.astype(np.float32)
        else:
            u = _NO_USER
        return scores, u, rep, sess_idx, ss

    def _pool_scoring(self) -> _PoolTerms | None:
        """The pool terms when ``recommend`` needs the catalogue pool's scores only: ``catalogue_only`` with a
        catalogue (a second stage then re-ranks the best of the catalogue: ``Stage2.features``' ``subset``).
        Made once per pool and base vectors (``set_products``, ``set_item_heat`` replace those arrays)."""
        pool = self._catalogue_idx
        if not self.rerank.catalogue_only or pool is None:
            return None
        pt = self._pool_terms
        b0, b1 = self._base
        if pt is None or pt.pool is not pool or pt.base_src[0] is not b0 or pt.base_src[1] is not b1:
            pos = np.full(self.V + 1, -1, np.intp)  # index V (-1 wraps there) stays outside
            pos[pool] = np.arange(len(pool))
            pt = _PoolTerms(pool, (b0, b1), pos, self._tie.take(pool),
                            (None if b0 is None else b0.take(pool), None if b1 is None else b1.take(pool)))
            self._pool_terms = pt
        return pt

    def _cooc_in_pool(self, pt: _PoolTerms, ix: np.ndarray, vx: np.ndarray,
                      memo: bool) -> tuple[np.ndarray, np.ndarray]:
        """The entries of a sparse co-occurrence part (``_cooc_terms``) that fall in the pool, as positions in
        it, in their order. ``memo``: ``ix`` / ``vx`` are the memoised session part (read-only arrays kept
        across requests), whose cut is kept too."""
        ent = self._cooc_pool_memo.get(id(ix)) if memo else None
        if ent is not None and ent[0] is ix and ent[1] is pt.pool:
            return ent[2], ent[3]
        p = pt.pos.take(ix)
        keep = p >= 0
        p, v = p[keep], vx[keep]
        if memo:
            if len(self._cooc_pool_memo) >= SESSION_CACHE_VISITS:
                self._cooc_pool_memo.pop(next(iter(self._cooc_pool_memo)))
            self._cooc_pool_memo[id(ix)] = (ix, pt.pool, p, v)
        return p, v

    def _wide(self, ctx: np.ndarray) -> np.ndarray | None:
        """The wide path's scores for context vector ``ctx`` (memoised by its bytes; under ``_lock``)."""
        if self._wide_f is None or self._wide_scale is None:
            return None
        ckey = ctx.tobytes()
        wide = self._wide_memo.get(ckey)
        if wide is None:
            nz = np.flatnonzero(ctx)
            wide = (ctx[nz] * self._wide_scale[nz]) @ self._wide_f[nz]
            wide.flags.writeable = False
            if len(self._wide_memo) >= WIDE_MEMO:
                self._wide_memo.pop(next(iter(self._wide_memo)))
            self._wide_memo[ckey] = wide
        return wide

    def _session_idx(self, session: Sequence[Any]) -> tuple[list[int], int]:
        """(vocabulary indices of the known picks in order, unknown count). One C-level pass (``map``) for
        the usual all-string session; non-string entries are looked up as strings."""
        n = len(session)
        if not n:
            return [], 0
        get = self._index.get
        if n <= 16:  # the usual case, one new pick: plain dict lookups, no numpy call overhead (~4 µs)
            out: list[int] = []
            unknown = 0
            for s in session:
                i = get(s, -1)
                if i < 0 and not isinstance(s, str):
                    i = get(str(s), -1)
                if i >= 0:
                    out.append(i)
                else:
                    unknown += 1
            return out, unknown
        idx = np.fromiter(map(get, session, repeat(-1, n)), np.int64, n)
        miss = np.flatnonzero(idx < 0)
        for j in miss.tolist():
            s = session[j]
            if not isinstance(s, str):
                idx[j] = get(str(s), -1)
        unknown = 0
        if len(miss):
            unknown = int((idx < 0).sum())
            idx = idx[idx >= 0]
        return idx.tolist(), unknown

    def _session_state(self, req: RecRequest) -> _SessionState:
        """What the ranker derives from ``req.session``, built incrementally per ``session_id``: a visit's
        session only grows, so each request maps just the new picks (a shelf left alone with the bench's
        anonymous session holds thousands of picks; this was O(visit length) per request, several times).
        Anything that is not the cached session plus new picks is rebuilt from scratch."""
        session = req.session
        key = req.session_id if isinstance(session, list | tuple) else None
        own = req.session_append_only and isinstance(session, list)
        n = len(session)
        with self._sess_lock:
            st = self._sess_cache.get(key) if key is not None else None
            if st is not None and key is not None:
                m = st.n
                if own and st.src is session and n >= m:
                    self._sess_cache.move_to_end(key)
                else:
                    seen = st.items if st.src is None else st.src[:m]
                    if n < m or type(session) is not type(seen) or session[:m] != seen:
                        st = None
                    else:
                        self._sess_cache.move_to_end(key)
            if st is None:
                st = _SessionState(session[:0], 0, {}, {}, set(), (-1, {}))
                if key is not None:
                    self._sess_cache[key] = st
                    if len(self._sess_cache) > SESSION_CACHE_VISITS:
                        self._sess_cache.popitem(last=False)
            m = st.n
            if n > m:
                tail = session[m:n]  # not past n: an append-only list may grow meanwhile
                idx, unknown = self._session_idx(tail)
                st.unknown += unknown
                last, first = st.last, st.first
                for i in idx:
                    last.pop(i, None)
                    last[i] = None
                    if i not in first:
                        first[i] = None
                st.skus.update(tail)
                st.n = n
            if own:
                if st.src is not session:
                    st.src, st.items = session, session[:0]
            elif n > m or st.src is not None:
                st.src, st.items = None, session[:n]
            return st

    def _cooc_terms(self, rep: Any, hi: np.ndarray, hw: np.ndarray, si: np.ndarray, sw: np.ndarray,
                    ns: int, top_h: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Sparse (indices, values) parts of the co-occurrence terms with the graph's items and weights, to be
        added in this order: cw0 · Σ_session, cw1 · Σ_history, then cw2 · Σ_session on the shopper's own
        items (``features.cooc_scores`` as sparse lists: the same sums, a few numpy calls). The session part
        depends on the latest picks only and is memoised by them (a shelf's visit cycles through the same few
        picks; under ``_lock``). ``top_h``: ``history_inputs``' positions of ``hi``'s items in ``rep.items``; with
        more than HIST_LEN items, they and the history part's neighbour rows are kept in ``_last_hist`` for stage 2,
        whose history co-occurrence gathers the same rows (``Stage2.features``' ``hist_rows``)."""
        assert self._nb_idx is not None and self._nb_val is not None and self._cooc_w is not None
        nh = min(len(rep.items), HIST_LEN)
        cw = self._cooc_w if (nh or self._cooc_w_cold is None) else self._cooc_w_cold
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        sess: tuple[np.ndarray, np.ndarray] | None = None
        if ns:
            key = si[:ns].tobytes()
            ent = self._cooc_memo.get(key)
            if ent is not None and ent[0] is cw:  # made with these weights (cold / warm, never replaced in place)
                sess = ent[1]
            else:
                items = si[:ns] - 1
                val = self._nb_val.take(items, 0)
                val *= (sw[:ns] * cw[0])[:, None]
                sess = (self._nb_idx.take(items, 0).ravel(), val.ravel())
                sess[0].flags.writeable = sess[1].flags.writeable = False
                if len(self._cooc_memo) >= SESSION_CACHE_VISITS:
                    self._cooc_memo.pop(next(iter(self._cooc_memo)))
                self._cooc_memo[key] = (cw, sess)
            parts.append(sess)
        if nh:
            items = hi[:nh] - 1
            rows = self._nb_val.take(items, 0)
            val = rows * (hw[:nh] * cw[1])[:, None]  # not in place: ``rows`` goes to stage 2 as gathered
            nbr = self._nb_idx.take(items, 0).ravel()
            parts.append((nbr, val.ravel()))
            if top_h is not None and len(rep.items) > HIST_LEN:
                self._last_hist = (rep, top_h, nbr, rows)
        if sess is not None and nh and cw[2] and cw[0]:
            mask = self._bought_mask  # all False between calls (used under the lock)
            mask.put(rep.items, True)
            sel = mask.take(sess[0])
            mask.put(rep.items, False)
            parts.append((sess[0][sel], sess[1][sel] * (cw[2] / cw[0])))
        return parts

    def scores(self, req: RecRequest) -> np.ndarray:
        """Raw model scores over the vocabulary (for evaluation and diagnostics)."""
        return self._invoke(req)[0]

    def invoke_only(self) -> None:
        """One interpreter invoke on the current inputs (benchmarks)."""
        with self._lock:
            self._it.invoke()

    # -- recommend ------------------------------------------------------------
    def _knows_nothing(self, req: RecRequest) -> bool:
        """No history, profile, store or known pick: the model has nothing to go on (the caller falls back).
        The unknown picks of such a request are counted here, as the model path counts them in ``_invoke``."""
        if (req.history or req.profile or req.store_id is not None
                or any(s in self._index for s in req.session)):
            return False
        self.stats["unknown_sku"] += len(req.session)
        return True

    def recommend(self, req: RecRequest) -> list[Recommendation]:
        return self._recommend(req, False)  # type: ignore[no-any-return]

    def recommend_tuples(self, req: RecRequest) -> list[tuple[str, float, str]]:
        """``recommend``'s answer as (sku, score, reason) tuples, the same values, without making the
        ``Recommendation`` objects (the recommend room's adapter wants tuples: ~0.5 us an item twice)."""
        return self._recommend(req, True)  # type: ignore[no-any-return]

    def _recommend(self, req: RecRequest, tuples: bool) -> list[Any]:
        self.stats["requests"] += 1
        k = max(1, min(int(req.k), 100))
        if self._knows_nothing(req):
            return self._fallback_as(req, k, tuples)
        pt = self._pool_scoring()
        scores, u, rep, sess_idx, st = self._invoke(req, pt)
        # in pool mode ``scores`` holds the pool's scores (pool order) and is read through ``sc_pos``: the
        # candidates, the promoted and the live ones are unblocked, so in the catalogue
        scores += self._tie if pt is None else pt.tie  # _invoke returns a fresh array: in place, the same sums
        sc_pos = None if pt is None else pt.pos
        if st.n != len(req.session):  # an append-only session grew meanwhile: derive it again
            st = self._session_state(req)
        if req.zone is not None and self.rerank.cold_zone_blend and not (st.first or rep.n_baskets):
            self._zone_blend(scores, req.zone, pt)  # a new shopper: the zone is the context that tells most
        if self.rerank.drop_session_items:
            ex = req.exclude
            excl = (ex | st.skus) if isinstance(ex, set) else st.skus.union(ex)  # one new set
        else:
            excl = set(req.exclude)
        cap_key = (req.screen, req.session_id) if (req.screen or req.session_id) else None
        excl_idx = self._excluded_indices(cap_key, excl) if excl else None
        hint = None
        if self._stage2 is not None and req.second_stage:
            # after the re-derivation: stage 2 sees the picks the exclusions use
            # the latest SESSION_LEN distinct picks, oldest first (what ``Stage2.features`` reads of list(last))
            lr = self._last_repeat
            lh = self._last_hist
            # in pool mode its pool is the best of the catalogue (the items that can be shown); excluded and
            # suppressed items are left out of it (the walk below drops them anyway)
            hint = self._stage2.rescore(scores, rep, list(islice(reversed(st.last), SESSION_LEN))[::-1], self._heat,
                                 lr[1] if lr is not None and lr[0] is rep else None,
                                 None if pt is None else (pt.pool, pt.pos), drop=excl_idx, block=self._rule_block,
                                 hist_rows=lh[1:] if lh is not None and lh[0] is rep else None,
                                 promotions=req.promotions)
        capped = self._caps.get(cap_key) if cap_key else None

        top, order, block = self._candidate_order(scores, len(excl) + k, pt, hint)
        get = self._index.get
        voc, cat_of = self.vocabulary, self.category
        cap = self.rerank.repeat_cap
        # The candidates, best first, are the model's (``order``) minus the excluded skus, then promoted
        # skus outside ``order`` and new items (merged by score when there are new items). Exclusions and
        # caps are masks over ``order``; tuples are built only for what the walk below reaches.
        V = self.V
        mask = np.zeros(V + 1, bool)  # index V: what ``get`` maps to -1 (not in the vocabulary)
        if excl_idx is not None:
            mask[excl_idx] = True
            live = order[~mask.take(order)]
            mask[:] = False
        else:
            live = order
        n_capped = 0
        if capped:
            ci = self._capped_indices(cap_key, capped, cap)  # type: ignore[arg-type]
            if ci:
                mask[self._capped_array(cap_key, ci)] = True  # type: ignore[arg-type]
                hit = mask.take(live)
                n_capped = int(np.count_nonzero(hit))
                if n_capped:
                    live = live[~hit]
        extras: list[tuple[str, float, int, int]] = []  # in the order the candidate list had them
        if self._promote:  # promoted items compete even when the model ranks them low
            have = set(top.tolist())
            for sku in self._promote:
                i = get(sku, -1)
                if i >= 0 and i not in have and sku not in excl and (block is None or not block[i]):
                    extras.append((sku, float(scores[i if sc_pos is None else sc_pos[i]]), int(cat_of[i]), i))
        # (u is empty if the new items arrived after _invoke read the outputs: they wait for the next request)
        merge = bool(self.rerank.new_items and len(self._new_skus) and len(u))
        if merge:
            ns = self._new_W @ u + self._new_b
            nt = np.argsort(-ns)[: k]
            extras.extend(c for c in ((self._new_skus[j], float(ns[j]), int(self._new_cat[j]), -1) for j in nt)
                          if self._allowed_new(c, excl))
        if capped and extras:
            kept_x = [c for c in extras if capped.get(c[0], 0) < cap]
            n_capped += len(extras) - len(kept_x)
            extras = kept_x
        live_sc = scores.take(live) if sc_pos is None else scores.take(sc_pos.take(live))
        # where each extra sits among the live candidates: after every one scoring at least as much (the
        # stable sort by score the plain list had with new items), else after all of them
        if merge and extras:
            extras.sort(key=lambda c: -c[1])
            at = np.searchsorted(-live_sc.astype(np.float64), [-c[1] for c in extras], side="right").tolist()
        else:
            at = [len(live)] * len(extras)

        # caps for all, stock only until enough survivors: with no negative boosts, an unboosted
        # candidate after the first ``need`` unboosted survivors can never reach the head MMR sees
        lam = self.rerank.diversity
        need = 4 * k if lam > 0 else k
        early = self._promote_nonneg
        promote = self._promote
        stock = self.stock
        kept: list[tuple[str, float, int, int]] = []
        n_plain = n_oos = 0
        nl, nx = len(live), len(extras)
        head = nl if not early else min(nl, need + 8)  # grown below if stock or exclusions thin it out
        li = live[:head].tolist()
        ls = live_sc[:head].tolist()
        lc = cat_of[live[:head]].tolist()
        j = x = 0
        fam = self._family
        if not nx and not promote:
            # the usual case (no promotions, no new items): the model's candidates in order until ``need`` in
            # stock (``early`` holds without promotions); the tuple made only for a kept one. With families
            # (``set_families``) a later variant of a kept family is skipped here, so ``need`` are distinct lines
            fseen: set[int] = set()
            n_fam = 0
            while j < nl and n_plain < need:
                if j >= len(li):  # the head ran out before ``need`` survivors: take the rest
                    li = live.tolist()
                    ls = live_sc.tolist()
                    lc = cat_of[live].tolist()
                i = li[j]
                sku = voc[i]
                j += 1
                f = -1 if fam is None else fam[i]
                if f >= 0 and f in fseen:
                    n_fam += 1
                    continue
                if stock is not None:
                    units = stock(sku)
                    if units is not None and units <= 0:
                        n_oos += 1
                        continue
                if f >= 0:
                    fseen.add(f)
                n_plain += 1
                kept.append((sku, ls[j - 1], lc[j - 1], i))
            if n_fam:
                self.stats["same_family"] += n_fam
        while (nx or promote) and (j < nl or x < nx):  # with promotions or new items: merge them in
            if x < nx and at[x] <= j:
                c = extras[x]
                x += 1
            else:
                if early and n_plain >= need:
                    break
                if j >= len(li):  # the head ran out before ``need`` survivors: take the rest
                    li = live.tolist()
                    ls = live_sc.tolist()
                    lc = cat_of[live].tolist()
                i = li[j]
                c = (voc[i], ls[j], lc[j], i)
                j += 1
            sku = c[0]
            boost = promote.get(sku) if promote else None
            if early and boost is None and n_plain >= need:
                continue
            if stock is not None:
                units = stock(sku)
                if units is not None and units <= 0:
                    n_oos += 1
                    continue
            if boost is None:
                n_plain += 1
                kept.append(c)
            else:
                kept.append((sku, c[1] + boost, c[2], c[3]))
        if (j < nl or x < nx) and (nx or promote):  # past the head only promoted candidates can still get in
            tail: list[tuple[int, int, tuple[str, float, int, int]]] = []
            if self._promote_mask is not None and promote:
                rest = live[j:]
                for q in np.flatnonzero(self._promote_mask[rest]).tolist():
                    i = int(rest[q])
                    tail.append((j + q, 1, (voc[i], float(live_sc[j + q]), int(cat_of[i]), i)))
            tail.extend((at[y], 0, extras[y]) for y in range(x, nx))
            tail.sort(key=lambda t: (t[0], t[1]))
            for _, _, c in tail:
                sku = c[0]
                boost = promote.get(sku) if promote else None
                if boost is None:  # n_plain >= need (early) here
                    continue
                if stock is not None:
                    units = stock(sku)
                    if units is not None and units <= 0:
                        n_oos += 1
                        continue
                kept.append((sku, c[1] + boost, c[2], c[3]))
        self.stats["capped"] += n_capped
        self.stats["out_of_stock"] += n_oos
        if nx or promote:  # the plain walk keeps ``live``'s order, already by score (a stable sort: the same)
            kept.sort(key=lambda c: -c[1])
            if fam is not None:  # after the boosts: a promoted variant stands for its family
                kept = self._one_per_family(kept)
        chosen = self._mmr(kept, k)
        if not chosen:
            return self._fallback_as(req, k, tuples)
        reasons = self._reasons(chosen, rep, sess_idx, req, st)
        out: list[Any]
        if tuples:
            out = [(c[0], round(c[1], 4), r) for c, r in zip(chosen, reasons, strict=True)]
        else:
            out = [_recommendation(c[0], round(c[1], 4), r) for c, r in zip(chosen, reasons, strict=True)]
        self.stats["new_item_recs"] += sum(1 for c in chosen if c[3] < 0)
        if cap_key is not None:
            self._remember(cap_key, [c[0] for c in chosen])
        return out

    def set_zone_items(self, items: Mapping[str, Iterable[str]]) -> None:
        """Each zone's skus (the node's layout: what the zone's shelves stock), for ``rerank.cold_zone_blend``:
        the model has no zone input (Complete Journey has no zones), so without this a new shopper gets the
        same cold list in every zone. Skus outside the vocabulary are left out (new items get no boost)."""
        get = self._index.get
        self._zone_items = {
            str(z): np.array(sorted({i for i in (get(str(s), -1) for s in skus) if i >= 0}), np.intp)
            for z, skus in items.items()}
        self._zone_pos = {}

    def set_families(self, families: Mapping[str, str]) -> int:
        """sku -> what the shopper reads as one line (the node's display name without the pack size,
        ``edge.recommend.display_family``). An answer then holds one sku per family, the best-ranked one, so its k
        items are k different lines: a store catalogue lists pack and size variants under one name (65 families
        with more than one sku in the bundled one), the model scores them alike, and a screen showing two of them
        looks broken. Skus without a variant (or not mentioned) are unaffected; an empty mapping turns it off.
        The evaluation harness never calls it (its answers stay per sku). Returns the number of families with
        variants."""
        by: dict[str, list[str]] = {}
        for sku, fam in families.items():
            by.setdefault(str(fam), []).append(str(sku))
        get = self._index.get
        vec = [-1] * len(self.vocabulary)
        new: dict[str, int] = {}
        n = 0
        for skus in by.values():
            if len(skus) < 2:
                continue
            for sku in skus:
                i = get(sku, -1)
                if i >= 0:
                    vec[i] = n
                else:
                    new[sku] = n
            n += 1
        self._family, self._family_new = (vec, new) if n else (None, {})
        return n

    def _one_per_family(self, kept: list[tuple[str, float, int, int]]) -> list[tuple[str, float, int, int]]:
        """``kept`` (best first) without the later variants of a family (``set_families``)."""
        fam, fam_new = self._family, self._family_new
        if fam is None:
            return kept
        seen: set[int] = set()
        out = []
        for c in kept:
            f = fam[c[3]] if c[3] >= 0 else fam_new.get(c[0], -1)
            if f >= 0:
                if f in seen:
                    continue
                seen.add(f)
            out.append(c)
        if len(out) < len(kept):
            self.stats["same_family"] += len(kept) - len(out)
        return out

    def _zone_blend(self, scores: np.ndarray, zone: str, pt: _PoolTerms | None) -> None:
        """Add ``cold_zone_blend`` x (max - min of ``scores``) to ``zone``'s items, in place (pool positions with
        ``pt``): scale-free across releases, and at 1 every zone item ends above every other item."""
        idx = self._zone_items.get(zone)
        if idx is None:
            return
        if pt is not None:  # the zone's items in the catalogue pool, as positions: once per pool
            ent = self._zone_pos.get(zone)
            if ent is None or ent[0] is not pt.pool:
                p = pt.pos.take(idx)
                ent = self._zone_pos[zone] = (pt.pool, p[p >= 0])
            idx = ent[1]
        if len(idx):  # argmax / argmin: the same max and min, without the reduction wrappers (~2 us -> ~0.5 us)
            span = float(scores[scores.argmax()]) - float(scores[scores.argmin()])
            scores[idx] += np.float32(self.rerank.cold_zone_blend * span)

    def _candidate_order(self, scores: np.ndarray, extra: int, pt: _PoolTerms | None = None,
                         hint: tuple[np.ndarray, np.ndarray, float] | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(top, order, block): the model's best ``candidates + extra`` (catalogue items only when
        ``catalogue_only``), those best first minus the suppressed / outside-the-catalogue ones, and that
        block mask (None: nothing blocked). With ``pt`` (``_pool_scoring``) ``scores`` are the pool's.
        ``hint``: what ``Stage2.rescore`` returned (whole vocabulary): the best are then among its pool and
        left-out items (``_hinted_order``) instead of a threshold and partition over all the scores."""
        if pt is not None:
            pool: np.ndarray | None = pt.pool
        else:
            pool = self._catalogue_idx if (self.rerank.catalogue_only and self._catalogue_idx is not None) else None
        hinted = None
        if hint is not None and (pt is not None or pool is None):  # ``scores`` are what stage 2 re-scored
            hinted = self._hinted_order(scores, min(len(scores), self.rerank.candidates + extra), hint)
        if hinted is not None:
            top = order = hinted if pt is None else pt.pool.take(hinted)  # pool positions -> vocabulary
        elif pool is not None:
            M = min(len(pool), self.rerank.candidates + extra)
            neg = -(scores.take(pool) if pt is None else scores)  # take: the same as [] on 1-d, cheaper
            part = neg.argpartition(M - 1)[:M] if M > 0 else pool[:0]  # methods: no np.* wrapper (~1 us each)
            top = pool.take(part)
            order = top.take(neg.take(part).argsort(kind="stable"))  # negation is exact: the same keys
        else:
            M = min(self.V, self.rerank.candidates + extra)
            top = _top_m(scores, M)
            order = top.take((-scores.take(top)).argsort(kind="stable"))
        # vectorised filter of the model's candidates: suppressed skus/categories, outside the catalogue
        block = self._rule_block
        if self.rerank.catalogue_only and self._catalogue is not None and self._cat_block is not None:
            block = self._cat_block if block is None else (block | self._cat_block)
        if block is not None and not (pool is not None and self._rule_block is None):  # the pool is never cat-blocked
            order = order[~block[order]]
        return top, order, block

    @staticmethod
    def _hinted_order(scores: np.ndarray, M: int, hint: tuple[np.ndarray, np.ndarray, float]) -> np.ndarray | None:
        """The ``M`` best of ``scores``, best first, from stage 2's pool and left-out items (``Stage2.rescore``):
        every item scoring at least the pool's lowest new score is one of those, so with at least ``M`` in the
        pool the best ``M`` are too. The answer of the partition over all scores when the order is strict (no
        equal scores among the best ``M`` nor at the cut): else None and the caller takes that path (with equal
        scores its order depends on the partition's)."""
        spool, left, low = hint
        if len(spool) < M or M <= 0:
            return None
        if len(left):
            left = left[scores.take(left) >= low]
            cand = np.concatenate((spool, left)) if len(left) else spool
        else:
            cand = spool
        sc = scores.take(cand)
        o = (-sc).argsort(kind="stable")  # negation is exact: the same keys
        head = sc.take(o[: M + 1])
        if not (head[:-1] > head[1:]).all():
            return None
        return cand.take(o[:M])

    def _capped_indices(self, key: tuple[str | None, str | None], counts: dict[str, int], cap: int) -> list[int]:
        """Vocabulary indices of the skus shown ``cap`` times to ``key``: kept by ``_remember`` as counts
        cross the cap, rebuilt from ``counts`` when the cap or the counts object changed."""
        ent = self._capped_idx.get(key)
        if ent is None or ent[0] != cap or ent[1] is not counts:
            get = self._index.get
            idx = [i for i in (get(s, -1) for s, n in counts.items() if n >= cap) if i >= 0]
            ent = self._capped_idx[key] = (cap, counts, idx)
            if len(self._capped_idx) > 2 * 4096:
                self._capped_idx = {kk: v for kk, v in self._capped_idx.items() if kk in self._caps}
        return ent[2]

    def _excluded_indices(self, key: tuple[str | None, str | None] | None, excl: set[Any]) -> np.ndarray:
        """Vocabulary indices of ``excl`` (-1 for skus outside it). A visit's exclusions mostly grow (its
        picks and capped skus), so with the last request's set a subset of this one only the added skus are
        looked up: one set difference of small sets instead of ~170 lookups in the 10k-sku index (20 us in
        situ, where the index is out of cache after the invoke)."""
        get = self._index.get
        ent = self._excl_memo.get(key) if key is not None else None
        if ent is not None:
            prev, prev_idx = ent
            added = excl - prev
            if len(excl) - len(added) == len(prev):  # prev ⊆ excl
                idx = prev_idx if not added else np.concatenate(
                    (prev_idx, np.fromiter(map(get, added, repeat(-1, len(added))), np.int64, len(added))))
                self._excl_memo[key] = (excl, idx)  # type: ignore[index]
                return idx
        idx = np.fromiter(map(get, excl, repeat(-1, len(excl))), np.int64, len(excl))
        if key is not None:
            if ent is None and len(self._excl_memo) >= SESSION_CACHE_VISITS:
                self._excl_memo.pop(next(iter(self._excl_memo)), None)
            self._excl_memo[key] = (excl, idx)
        return idx

    def _capped_array(self, key: tuple[str | None, str | None], ci: list[int]) -> np.ndarray:
        """``ci`` (an append-only list from ``_capped_indices``) as an index array, extended by what was
        appended since the last request: indexing a mask with a list of 150 ints costs 11 us, with an
        array 0.6 us."""
        ent = self._capped_np.get(key)
        if ent is not None and ent[0] is ci:
            arr = ent[2] if ent[1] == len(ci) else np.concatenate((ent[2], np.array(ci[ent[1]:], np.intp)))
        else:
            arr = np.array(ci, np.intp)
            if len(self._capped_np) > 2 * 4096:
                self._capped_np.clear()
        self._capped_np[key] = (ci, len(arr), arr)
        return arr

    def _allowed_new(self, c: tuple[str, float, int, int], excl: set[Any]) -> bool:
        """The rule filter for a new (out-of-vocabulary) item, by sku and category."""
        sku = c[0]
        if sku in excl or sku in self._suppress:
            return False
        if self._suppress_cat and 0 <= c[2] < len(self._cat_names) and self._cat_names[c[2]] in self._suppress_cat:
            return False
        return not (self.rerank.catalogue_only and self._catalogue is not None and sku not in self._catalogue)

    def _mmr(self, kept: list[tuple[str, float, int, int]], k: int) -> list[tuple[str, float, int, int]]:
        """MMR with "same category" as the similarity over the head of ``kept`` (sorted by score).

        The penalty is 0 or ``lam``, and the base is monotone in the score, so each step only compares
        the first remaining item of an unseen category with the first of a seen one (plain floats), and
        only when the seen one comes first: after it, base - lam < base of the unseen one."""
        lam = self.rerank.diversity
        if lam <= 0 or len(kept) <= k:
            return kept[:k]
        kept = kept[: 4 * k]  # MMR over the head only: bounded cost on the hot path
        lo = kept[-1][1]  # sorted by score, best first: the last is the minimum, the first the maximum
        span = (kept[0][1] - lo) or 1.0
        w = 1 - lam  # base(j) = w * (score - lo) / span, made only for the pairs compared below
        remaining = list(range(len(kept)))
        seen: set[int] = set()
        chosen: list[tuple[str, float, int, int]] = []
        for _ in range(min(k, len(kept))):
            fresh = pen = -1
            for j in remaining:  # up to the first unseen category: a seen one after it loses anyway
                if kept[j][2] in seen:
                    if pen < 0:
                        pen = j
                else:
                    fresh = j
                    break
            if fresh < 0:
                j = pen
            elif pen < 0:
                j = fresh
            else:
                a, b = w * (kept[fresh][1] - lo) / span, w * (kept[pen][1] - lo) / span - lam
                j = fresh if (a > b or (a == b and fresh < pen)) else pen
            remaining.remove(j)
            seen.add(kept[j][2])
            chosen.append(kept[j])
        return chosen

    def _name(self, sku: str) -> str:
        return self._names.get(sku, sku)

    def _reasons(self, chosen: list[tuple[str, float, int, int]], rep: Any, sess_idx: list[int],
                 req: RecRequest, st: _SessionState | None = None) -> list[str]:
        """A short reason per chosen item; repeat shares looked up only for the chosen items. With the
        visit's session state ``st`` the session-similarity part is remembered per item for as long as the
        visit's distinct picks stay the same (the same numbers: one ``emb_s @ item_emb[i]`` per item)."""
        share: dict[int, float] = {}
        if len(rep.items):
            # item -> share for all of the shopper's items, made once per visit: ``rep.share`` is the history
            # structure's own array on every request of the visit (shares do not depend on the time)
            shares = self._share_memo
            sh_ent = shares.get(id(rep.share))
            if sh_ent is not None and sh_ent[0] is rep.share and sh_ent[1] is rep.items:
                share = sh_ent[2]
            else:
                share = dict(zip(rep.items.tolist(), rep.share.tolist(), strict=True))
                shares[id(rep.share)] = (rep.share, rep.items, share)  # holds the arrays: their ids stay unique
                if len(shares) > HIST_CACHE_VISITS:
                    shares.pop(next(iter(shares)), None)
        # distinct picks, first occurrence kept (``_invoke`` passes them so): argmax below still finds the
        # same (first) best item, over a few rows instead of one per pick of the visit
        if st is None or len(st.first) != len(sess_idx):  # ``list(st.first)`` is distinct already
            sess_idx = list(dict.fromkeys(sess_idx))
        memo: dict[int, int] | None = None
        if st is not None and sess_idx and len(st.first) == len(sess_idx):  # ``first`` only grows: same picks
            n_first, memo = st.because
            if n_first != len(sess_idx):
                memo = {}
                st.because = (len(sess_idx), memo)
        emb_s = None
        out: list[str] = []
        for c in chosen:
            i = c[3]
            if i < 0:
                out.append("new in store")
                continue
            sh = share.get(i)
            if sh is not None:
                out.append("you buy this often" if sh >= 0.2 else "bought before")
                continue
            if sess_idx:
                j = memo.get(i) if memo is not None else None
                if j is None:
                    if emb_s is None:
                        emb_s = self.item_emb[sess_idx]
                    sims = emb_s @ self.item_emb[i]
                    j = int(sims.argmax())
                    if not sims[j] > 0.2:
                        j = -1
                    if memo is not None:
                        memo[i] = j
                if j >= 0:
                    out.append(f"because you picked up {self._name(self.vocabulary[sess_idx[j]])}")
                    continue
            out.append("popular here at this hour" if not req.history else "picked for you")
        return out

    def reset_caps(self, session_id: str | None, screen: str | None = None) -> bool:
        """Forget what (``screen``, ``session_id``) was shown: a new round of frequency caps (the node calls
        this when a long visit has seen everything). True if there was anything to forget."""
        self._capped_idx.pop((screen, session_id), None)
        return self._caps.pop((screen, session_id), None) is not None

    def end_session(self, session_id: str) -> int:
        """The visit ``session_id`` is over: drop its frequency caps (on every screen) and per-visit caches.
        Without this they stay until 4,096 newer visits push them out, which on a busy node is megabytes of
        counts for shoppers long gone. Returns how many cap tables were dropped."""
        keys = [k for k in self._caps if k[1] == session_id]
        for k in keys:
            del self._caps[k]
        for memo in (self._capped_idx, self._capped_np, self._excl_memo):
            for k in [k for k in memo if k[1] == session_id]:
                del memo[k]
        with self._sess_lock:
            self._sess_cache.pop(session_id, None)
        return len(keys)

    def forget_shown(self, session_id: str | None, skus: Iterable[str], screen: str | None = None) -> None:
        """Take back one showing of each of ``skus`` from (``screen``, ``session_id``)'s frequency caps: the
        caller left them off the screen after this ranker counted them (the recommend room drops a same-name
        variant). Counts never go below 0; a sku that drops under the cap is no longer capped."""
        key = (screen, session_id)
        d = self._caps.get(key)
        if not d:
            return
        cap = self.rerank.repeat_cap
        for sku in skus:
            n = d.get(sku, 0)
            if n <= 0:
                continue
            d[sku] = n - 1
            if n == cap:  # it was capped: the capped indices are rebuilt from the counts on the next request
                self._capped_idx.pop(key, None)

    def _remember(self, key: tuple[str | None, str | None], skus: list[str]) -> None:
        d = self._caps.get(key)
        if d is None:
            d = self._caps[key] = {}
            if len(self._caps) > 4096:
                self._caps.popitem(last=False)
        else:
            self._caps.move_to_end(key)
        cap = self.rerank.repeat_cap
        ent = self._capped_idx.get(key)
        grow = ent[2] if ent is not None and ent[0] == cap and ent[1] is d else None
        for sku in skus:
            n = d[sku] = d.get(sku, 0) + 1
            if n == cap and grow is not None:
                i = self._index.get(sku, -1)
                if i >= 0:
                    grow.append(i)

    def _fallback_as(self, req: RecRequest, k: int, tuples: bool) -> list[Any]:
        recs = self._fallback(req, k)
        return [(r.sku, r.score, r.reason) for r in recs] if tuples else recs

    def _fallback(self, req: RecRequest, k: int) -> list[Recommendation]:
        """Nothing known: popularity by zone × hour (lead's PopularityRanker) or the model's popularity."""
        self.stats["fallback"] += 1
        _, hour, _ = self._when(req.when)
        excl = set(req.exclude) | self._session_state(req).skus | self._suppress

        def in_stock(sku: str) -> bool:
            if self.stock is None:
                return True
            units = self.stock(sku)
            return units is None or units > 0

        if self.fallback is not None:
            items = self.fallback.top(req.zone, hour, k, exclude=excl, in_stock=in_stock)
            return [_recommendation(i.sku, float(i.score), i.reason) for i in items]
        out: list[Recommendation] = []
        stock = self.stock
        for sku, score in self._popular_order():
            if sku in excl or (stock is not None and not in_stock(sku)):
                continue
            out.append(_recommendation(sku, score, "popular in store"))
            if len(out) >= k:
                break
        return out

    def _popular_order(self) -> list[tuple[str, float]]:
        """(sku, rounded popularity) by descending popularity (stable), restricted to the catalogue when
        ``catalogue_only``: computed once per catalogue, not per request (a sort of the vocabulary and a
        Python scan past every non-catalogue sku cost ~3 ms a request)."""
        restrict = self._catalogue if self.rerank.catalogue_only else None
        key = (restrict is not None, self._catalogue_gen)
        if self._pop_key != key:
            order = np.argsort(-self.popularity, kind="stable").tolist()
            voc, pop = self.vocabulary, self.popularity
            self._pop_order = [(voc[i], round(float(pop[i]), 4)) for i in order
                               if restrict is None or voc[i] in restrict]
            self._pop_key = key
        return self._pop_order

    def health(self) -> dict[str, Any]:
        return {"version": self.version, "items": len(self.vocabulary), "new_items": len(self._new_skus),
                **self.stats}
