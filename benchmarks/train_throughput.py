"""Training throughput on the CPU: medxcept's epoch against a plain ``model.fit`` epoch, in one process.

Three measurements on the same Xception (:func:`medxcept.models.network.build_model`, random
initialization, compiled as :mod:`medxcept.models.train` compiles it), the same batch and image size:

(a) **train step alone**: ``model.fit`` on a ``PyDataset`` that returns one pre-made uint8 batch
    every step (no augmentation, no validation, no callbacks): the network's forward and backward.
(b) **medxcept's epoch**: :func:`medxcept.models.train.fit` itself (from scratch, as the demo trains), with
    its per-epoch evaluation: validation loss, validation and clean-training patient AUC, the
    collapse check, precise BN (``train.bn_recalibration``), best-epoch choice and checkpoints.
(c) **plain ``model.fit`` epoch**: the same :class:`~medxcept.images.dataset.CohortDataset` (same augmentation,
    same workers) and ``model.fit`` with no validation and no callbacks: what an epoch costs
    without medxcept's evaluation.

The first epoch of (b) and (c) includes tracing; the steady-state epochs after it are compared.
The headline is the ratio (b) / (c), which holds on any machine (target: <= 1.15 at 96 px), and
the CPU system time as a share of user time (``resource.getrusage`` of this process; target:
< 20 %). Where (b)'s epoch goes is printed too: the train steps, Keras' ``validation_data`` pass
(``Model.evaluate``), and each callback's ``on_epoch_end``.

Thread settings (:mod:`medxcept.threads`) are applied before Keras loads; ``--threads`` overrides
them (``default`` leaves the backend's own). ``--compare-threads`` runs (a) and (c) in one
subprocess per setting and prints step time and the system/user split side by side.

Usage::

    python -m benchmarks.train_throughput                       # 96 px, the demo's shape (~4 min on 2 cores)
    python -m benchmarks.train_throughput --px 299 --n-train 48 --n-val 16 --epochs 2
    python -m benchmarks.train_throughput --compare-threads default,auto,1
    python -m benchmarks.train_throughput --demo                # also time `python -m pipelines.retina`
    python -m benchmarks.train_throughput --bn-check            # the demo with and without precise BN
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULT_MARK = "THROUGHPUT_RESULT "
TARGET_RATIO = 1.15
TARGET_SYS_SHARE = 0.20


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


class _Clock:
    """Wall and CPU time between two points."""

    def __init__(self) -> None:
        self.t, (self.u, self.s) = time.perf_counter(), _cpu()

    def since(self) -> dict:
        u, s = _cpu()
        return {"wall": time.perf_counter() - self.t, "user": u - self.u, "sys": s - self.s}


def _apply_threads(setting: str) -> dict | None:
    """Thread settings before the backend loads: medxcept's own (``auto``), a number, or the backend default."""
    if setting == "default":
        os.environ["MEDXCEPT_THREADS"] = "off"
    elif setting != "auto":
        os.environ["MEDXCEPT_THREADS"] = setting
    try:
        from medxcept.threads import configure_threads
    except ImportError:  # code before medxcept.threads existed: the backend's defaults
        return None
    return configure_threads()


def _data(n: int, px: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, px, px, 3), dtype=np.uint8)
    # a smooth, label-dependent brightness so the network has something to learn (AUC defined)
    y = (np.arange(n) % 2).astype(np.int64)
    images[y == 1, px // 4:px // 2, px // 4:px // 2, 0] = 230
    return images, y


class _EpochTimer:
    """Callbacks bracketing every epoch: the first callback of the list opens, the last closes."""

    def __init__(self) -> None:
        import keras

        timer = self
        self.epochs: list[dict] = []
        self._clock: _Clock | None = None
        self._steps_end: dict | None = None

        class Open(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                timer._clock = _Clock()
                timer._steps_end = None
                timer._parts = {}

            def on_train_batch_end(self, batch, logs=None):
                timer._steps_end = timer._clock.since()

        class Close(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                total = timer._clock.since()
                timer.epochs.append({"total": total, "steps": timer._steps_end or total,
                                     "parts": dict(getattr(timer, "_parts", {}))})

        self.open, self.close = Open(), Close()

    def add(self, name: str, seconds: float) -> None:
        if self._clock is not None and hasattr(self, "_parts"):
            self._parts[name] = self._parts.get(name, 0.0) + seconds


def _instrument(timer: _EpochTimer):
    """Wrap ``keras.Model.fit`` so every fit gets the timer's callbacks around its own, each of its
    callbacks' ``on_epoch_end`` is timed, and ``Model.evaluate`` (the validation pass) and
    ``Model.predict`` calls inside an epoch are timed too. Returns an undo function."""
    import keras

    orig_fit, orig_eval = keras.Model.fit, keras.Model.evaluate

    def fit(self, *args, callbacks=None, **kwargs):
        wrapped = []
        for cb in list(callbacks or []):
            name = type(cb).__name__
            if getattr(cb, "_bench_timed", False):  # a callback reused by a later stage
                wrapped.append(cb)
                continue
            cb._bench_timed = True
            inner = cb.on_epoch_end

            def timed(epoch, logs=None, _inner=inner, _name=name):
                t = time.perf_counter()
                out = _inner(epoch, logs)
                timer.add(f"callback {_name}", time.perf_counter() - t)
                return out

            cb.on_epoch_end = timed
            wrapped.append(cb)
        return orig_fit(self, *args, callbacks=[timer.open, *wrapped, timer.close], **kwargs)

    def evaluate(self, *args, **kwargs):
        t = time.perf_counter()
        out = orig_eval(self, *args, **kwargs)
        timer.add("keras validation_data pass", time.perf_counter() - t)
        return out

    keras.Model.fit, keras.Model.evaluate = fit, evaluate

    def undo() -> None:
        keras.Model.fit, keras.Model.evaluate = orig_fit, orig_eval

    return undo


def _compiled_model(px: int):
    from medxcept.models.network import build_model
    from medxcept.models.train import _adamw, _compile, _schedule

    model = build_model(image_px=px, n_classes=2, dropout=0.3, seed=0)
    _compile(model, _adamw(_schedule(1e-3, 10, 10, 1), 1e-4), 2, 0.05)
    return model


def _steady(epochs: list[dict]) -> dict:
    """Mean of the epochs after the first (tracing) one; the first alone when there is one."""
    rest = epochs[1:] or epochs
    out = {k: sum(e["total"][k] for e in rest) / len(rest) for k in ("wall", "user", "sys")}
    out["steps_wall"] = sum(e["steps"]["wall"] for e in rest) / len(rest)
    out["steps_user"] = sum(e["steps"]["user"] for e in rest) / len(rest)
    out["steps_sys"] = sum(e["steps"]["sys"] for e in rest) / len(rest)
    parts: dict[str, float] = {}
    for e in rest:
        for k, v in e["parts"].items():
            parts[k] = parts.get(k, 0.0) + v / len(rest)
    out["parts"] = parts
    out["first_wall"] = epochs[0]["total"]["wall"]
    return out


def measure(args: argparse.Namespace) -> dict:
    threads = _apply_threads(args.threads)
    t_import = time.perf_counter()
    import keras
    import numpy as np

    keras_import = time.perf_counter() - t_import
    t_import = time.perf_counter()
    import medxcept.models.train as mtrain
    from medxcept.config import load_config
    from medxcept.images.dataset import CohortDataset
    from medxcept.models.network import resolve_weights

    medxcept_import = time.perf_counter() - t_import
    px, batch = args.px, args.batch
    train_x, train_y = _data(args.n_train, px, 1)
    val_x, val_y = _data(args.n_val, px, 2)
    steps = -(-args.n_train // batch)
    out: dict = {"px": px, "batch": batch, "n_train": args.n_train, "n_val": args.n_val, "steps": steps,
                 "threads": threads, "setting": args.threads, "backend": keras.backend.backend(),
                 "import_keras_s": keras_import, "import_medxcept_train_s": medxcept_import}
    timer = _EpochTimer()
    undo = _instrument(timer)
    try:
        # (a) the train step alone: one fixed batch, no augmentation
        class Fixed(keras.utils.PyDataset):
            def __init__(self):
                super().__init__()
                self.b = (train_x[:batch], train_y[:batch].astype("float32")[:, None])

            def __len__(self):
                return steps

            def __getitem__(self, i):
                return self.b

        if not args.skip_step:
            model = _compiled_model(px)
            timer.epochs.clear()
            model.fit(Fixed(), epochs=args.epochs, verbose=0, shuffle=False)
            out["a_step"] = _steady(timer.epochs)
            out["a_images_per_s"] = steps * batch / out["a_step"]["wall"]
        if args.only_steps:
            return out

        # (c) plain model.fit epoch: the product's dataset (augmentation, workers), nothing else
        from medxcept.images.augment import build_augment

        cfg = load_config(overrides={"preprocess.image_px": px, "train.batch_size": batch})
        ds = CohortDataset(train_x, train_y, n_classes=2, batch_size=batch, augment=build_augment(cfg.augment, seed=0),
                           shuffle=True, balance=cfg.augment.balance, seed=0, workers=cfg.train.workers,
                           use_multiprocessing=False)
        model = _compiled_model(px)
        timer.epochs.clear()
        model.fit(ds, epochs=args.epochs, verbose=0, shuffle=False)
        out["c_plain"] = _steady(timer.epochs)
        out["c_images_per_s"] = args.n_train / out["c_plain"]["wall"]
        del model
        if args.only_plain:
            return out

        # (b) medxcept's training: from scratch, every epoch with its evaluation
        cfg = load_config(overrides={"preprocess.image_px": px, "train.batch_size": batch, "train.head_epochs": 0,
                                     "train.finetune_epochs": args.epochs, "train.patience": 100})
        groups = np.arange(args.n_val) // 2
        timer.epochs.clear()
        with tempfile.TemporaryDirectory() as d:
            result = mtrain.fit(train_x, train_y, val_x, val_y, groups, cfg=cfg, weights=resolve_weights("none"),
                                n_classes=2, run_dir=Path(d), train_groups=np.arange(args.n_train) // 2)
        out["b_product"] = _steady(timer.epochs)
        out["b_images_per_s"] = args.n_train / out["b_product"]["wall"]
        out["history_columns"] = list(result.history.columns)
    finally:
        undo()
    out["ratio_b_over_c"] = out["b_product"]["wall"] / out["c_plain"]["wall"]
    cpu = {k: out[k]["user"] + out[k]["sys"] for k in ("b_product", "c_plain")}
    out["cpu_ratio_b_over_c"] = cpu["b_product"] / cpu["c_plain"]  # steadier than wall on a busy machine
    return out


def _share(d: dict, user: str = "user", sys_: str = "sys") -> float:
    return d[sys_] / d[user] if d[user] > 0 else float("nan")


def report(r: dict) -> None:
    print(f"\nbackend {r['backend']}, {r['px']} px, batch {r['batch']}, {r['n_train']} train / {r['n_val']} val "
          f"images ({r['steps']} steps), threads {r['setting']}: {r['threads']}")
    print(f"import: keras {r['import_keras_s']:.1f} s, medxcept.models.train {r['import_medxcept_train_s']:.1f} s")
    print(f"{'':34s}{'wall s':>8s}{'img/s':>8s}{'user s':>8s}{'sys s':>8s}{'sys/user':>9s}{'1st epoch s':>12s}")

    def row(name: str, d: dict, ips: float) -> None:
        print(f"{name:34s}{d['wall']:8.2f}{ips:8.1f}{d['user']:8.2f}{d['sys']:8.2f}{_share(d):9.2f}"
              f"{d['first_wall']:12.2f}")

    if "a_step" in r:
        row("(a) train step alone (epoch)", r["a_step"], r["a_images_per_s"])
    if "c_plain" in r:
        row("(c) plain model.fit epoch", r["c_plain"], r["c_images_per_s"])
        c = r["c_plain"]
        print(f"{'    of which train steps':34s}{c['steps_wall']:8.2f}{'':8s}{c['steps_user']:8.2f}{c['steps_sys']:8.2f}"
              f"{c['steps_sys'] / max(c['steps_user'], 1e-9):9.2f}")
    if "b_product" in r:
        b = r["b_product"]
        row("(b) medxcept epoch + evaluation", b, r["b_images_per_s"])
        print(f"{'    train steps':34s}{b['steps_wall']:8.2f}{'':8s}{b['steps_user']:8.2f}{b['steps_sys']:8.2f}"
              f"{b['steps_sys'] / max(b['steps_user'], 1e-9):9.2f}")
        for k, v in sorted(b["parts"].items(), key=lambda kv: -kv[1]):
            print(f"    {k:30s}{v:8.2f}  ({v / b['wall']:.0%} of the epoch)")
        rest = b["wall"] - b["steps_wall"]
        print(f"    {'everything after the last step':30s}{rest:8.2f}  ({rest / b['wall']:.0%} of the epoch)")
        ok = "OK" if r["ratio_b_over_c"] <= TARGET_RATIO else "ABOVE TARGET"
        print(f"ratio (b)/(c) epoch with evaluation / plain fit epoch: {r['ratio_b_over_c']:.3f} "
              f"(target <= {TARGET_RATIO}: {ok})")
        print(f"same ratio in CPU time (user + system; steadier on a shared machine): {r['cpu_ratio_b_over_c']:.3f}")
        print(f"system / user CPU over (b)'s whole epoch: {_share(b):.2f}")
        share = b["steps_sys"] / max(b["steps_user"], 1e-9)
        print(f"system / user CPU during (b)'s train steps: {share:.2f} (target < {TARGET_SYS_SHARE}: "
              f"{'OK' if share < TARGET_SYS_SHARE else 'ABOVE TARGET'})")
        print(f"history columns: {', '.join(r['history_columns'])}")


def _subprocess(args: argparse.Namespace, setting: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--px", str(args.px), "--batch", str(args.batch),
           "--n-train", str(args.n_train), "--n-val", str(args.n_val), "--epochs", str(args.epochs),
           "--threads", setting, "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise RuntimeError(f"{setting}: no result\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def compare_threads(args: argparse.Namespace) -> None:
    settings = args.compare_threads.split(",")
    rows = [(s, _subprocess(args, s, ["--only-plain"])) for s in settings]
    print(f"\nthread settings, {args.px} px, batch {args.batch} (one subprocess each; steady-state epochs)")
    print(f"{'setting':10s}{'resolved':48s}{'(a) s':>8s}{'(a) sys/user':>13s}{'(c) s':>8s}{'(c) sys/user':>13s}")
    for s, r in rows:
        print(f"{s:10s}{str(r['threads'])[:47]:48s}{r['a_step']['wall']:8.2f}{_share(r['a_step']):13.2f}"
              f"{r['c_plain']['wall']:8.2f}{_share(r['c_plain']):13.2f}")


def demo(args: argparse.Namespace) -> None:
    """Time ``python -m pipelines.retina`` (the demo) in a subprocess: wall, user and system CPU."""
    with tempfile.TemporaryDirectory() as d:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pipelines.retina", "--out-dir", d], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1])
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        metrics = next(Path(d).glob("*/metrics.json"), None)
        timings = json.loads(metrics.read_text()).get("timings") if metrics else None
    print(f"\ndemo (python -m pipelines.retina): exit {proc.returncode}, wall {wall:.0f} s, "
          f"user {after.ru_utime - before.ru_utime:.0f} s, sys {after.ru_stime - before.ru_stime:.0f} s; "
          f"timings {timings}")


def bn_check(out_dir: str | None = None) -> None:
    """Does precise BN (``train.bn_recalibration``) change the demo's results? One training trajectory,
    both answers per epoch.

    Runs the demo pipeline with :class:`medxcept.models.epoch_eval.EpochEvaluation` wrapped: at each epoch's end,
    before it recalibrates, the validation images are predicted with the moving statistics as
    training left them (the run without precise BN) and those statistics are kept; at the next
    epoch's start they are put back, so that trajectory continues as it would have without
    recalibration. Precise BN does not change the training steps (BatchNormalization uses batch
    statistics in training mode) and its result does not depend on the statistics it overwrites, so
    the history's own figures are the run with it. Prints val patient AUC and val prob SD per epoch.
    """
    import keras

    import medxcept.models.epoch_eval as epoch_eval

    rows: list[dict] = []
    kept: dict = {}
    original = epoch_eval.EpochEvaluation.on_epoch_end

    def moving(model):
        return [v for v in model.non_trainable_weights if "moving" in v.path]

    def on_epoch_begin(self, epoch, logs=None):
        if kept.get("values") is not None:
            for v, value in zip(moving(self.model), kept["values"], strict=True):
                v.assign(value)

    def on_epoch_end(self, epoch, logs=None):
        logits = self.model.predict(self.images[:self.n_val], batch_size=self.infer_batch, verbose=0)
        prob = epoch_eval._probs(logits[:, 0] if logits.shape[-1] == 1 else logits)
        kept["values"] = [keras.ops.convert_to_numpy(v).copy() for v in moving(self.model)]
        without = {"auc": epoch_eval._patient_auc(self.val_groups, self.val_y, prob, how=self.how),
                   "sd": epoch_eval._prob_sd(prob), "collapsed": epoch_eval.is_collapsed(prob)}
        original(self, epoch, logs)
        rows.append({"without": without, "with": {"auc": logs["val_patient_auc"], "sd": logs["val_prob_sd"],
                                                  "collapsed": bool(logs["collapsed"])}})
        print(f"epoch {len(rows)}: without precise BN: val patient AUC {without['auc']:.3f}, val prob SD "
              f"{without['sd']:.2e}{' (collapsed)' if without['collapsed'] else ''} | with: AUC "
              f"{logs['val_patient_auc']:.3f}, SD {logs['val_prob_sd']:.2e}"
              f"{' (collapsed)' if logs['collapsed'] else ''}", flush=True)

    epoch_eval.EpochEvaluation.on_epoch_begin = on_epoch_begin
    epoch_eval.EpochEvaluation.on_epoch_end = on_epoch_end
    from pipelines.retina import main as retina

    with tempfile.TemporaryDirectory() as d:
        sys.argv = ["retina", "--out-dir", out_dir or d]  # --out-dir keeps the run (its report and metrics)
        try:
            retina()
        except SystemExit:
            pass
    print(json.dumps(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--px", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=160, help="the demo trains on ~160 images: 10 steps of 16")
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--epochs", type=int, default=3, help="per measurement; the first (tracing) is reported apart")
    p.add_argument("--threads", default="auto", help="auto (medxcept.threads), default (the backend's), or N")
    p.add_argument("--compare-threads", metavar="S1,S2", help="e.g. default,auto,1: (a) and (c) per setting")
    p.add_argument("--demo", action="store_true", help="also time the demo pipeline (minutes)")
    p.add_argument("--bn-check", action="store_true", help="the demo with and without precise BN, per epoch")
    p.add_argument("--out-dir", help="with --bn-check: keep the demo's run directory here")
    p.add_argument("--skip-step", action="store_true", help="skip (a), the train step alone")
    p.add_argument("--only-steps", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only-plain", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.compare_threads:
        compare_threads(args)
        return
    if args.bn_check:
        bn_check(args.out_dir)
        return
    print(f"load average at start: {os.getloadavg()}")
    r = measure(args)
    if args.json:
        print(RESULT_MARK + json.dumps(r, default=str))
        return
    report(r)
    print(f"load average at end: {os.getloadavg()}")
    if args.demo:
        demo(args)


if __name__ == "__main__":
    main()
