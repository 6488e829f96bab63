"""Xception fine-tuning throughput on a GPU: medxcept's Keras path measured against timm.

Three paths, same image size and batch, warm-up steps excluded:

(a) **medxcept's model**: :func:`medxcept.models.network.build_model` (random initialization), compiled
    like :mod:`medxcept.models.train` (binary cross-entropy from logits with label smoothing, AdamW,
    AUC and accuracy metrics) with ``jit_compile=True`` (``--jit``), trained with ``model.fit`` on a
    ``PyDataset`` that returns the same pre-made uint8 batch every step: the model alone.
(b) **medxcept's full path**: a :class:`~medxcept.images.dataset.CohortDataset` over an in-memory uint8
    array of synthetic fundus photographs (painted by :func:`medxcept.cohort.demo.paint_fundus`,
    preprocessed by :func:`medxcept.images.preprocess.preprocess`) with the default fundus
    augmentation and ``workers`` threads, the same model. Inference goes through a
    ``CohortDataset`` without augmentation, as :func:`medxcept.models.inference.predict_logits` does.
(c) **timm** ``legacy_xception`` in PyTorch (``torch.autocast`` bf16, channels_last, optional
    ``torch.compile``), run in a subprocess so the two frameworks never share GPU memory;
    skipped when torch or timm does not import.

Timing: a callback records the start when the last warm-up step's outputs have reached the host
(``keras.ops.convert_to_numpy`` of the logs: a device sync) and the end in ``on_train_end`` /
``on_predict_end`` (after Keras' final sync); nothing is timed per step. Note that under the
TensorFlow backend Keras itself converts each step's logs to numpy (its callback list is not
asynchronous there), a host-device sync per step; ``--steps-per-execution`` amortizes it.

Targets (the issue): (a) trains at >= 1.3x timm; (b) keeps >= 90 % of (a); inference of (a) >= timm.

Usage::

    python benchmarks/gpu_xception.py --smoke --skip-timm          # seconds, CPU is fine
    python benchmarks/gpu_xception.py --px 299 --batch 64 --steps 50 --warmup 10 --precision bf16
    KERAS_BACKEND=jax python benchmarks/gpu_xception.py --compile  # several GPUs: data parallel
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMM_MARK = "TIMM_RESULT "
TARGET_TRAIN_VS_TIMM = 1.3
TARGET_FULL_VS_MODEL = 0.9
TARGET_INFER_VS_TIMM = 1.0


# --------------------------------------------------------------------------- data


def fundus_pool(n: int, px: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic fundus photographs preprocessed to uint8 ``px x px x 3``, and labels.

    Painted at a canvas size near ``px`` (the demo cameras are 288-384 px wide at scale 1), then
    FOV-cropped and resized by :func:`medxcept.images.preprocess.preprocess` like a real ingestion.
    """
    from medxcept.cohort.demo import CAMERAS, paint_fundus
    from medxcept.images.preprocess import PreprocessConfig, preprocess

    cfg = PreprocessConfig(image_px=px)
    scale = min(max(px / 300.0, 0.3), 1.0)
    images = np.empty((n, px, px, 3), dtype=np.uint8)
    y = np.zeros(n, dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        y[i] = i % 3 == 0
        rgb, _, _ = paint_fundus(rng, CAMERAS[i % 2], laterality="LR"[i % 2], referable=bool(y[i]), scale=scale)
        images[i] = preprocess(rgb, cfg, modality="fundus")
    return images, y


# --------------------------------------------------------------------------- multi-GPU


def maybe_data_parallel() -> int:
    """medxcept's own multi-GPU hook (:func:`medxcept.models.network.data_parallel`), as training uses it."""
    from medxcept.models.network import data_parallel

    return data_parallel()


# --------------------------------------------------------------------------- device helpers


def gpu_visible() -> bool:
    from medxcept.models.network import detect_device

    return detect_device()["device"] == "gpu"


def set_precision(precision: str, gpu: bool) -> str:
    """``mixed_bfloat16`` for ``bf16`` when a GPU is visible, else ``float32``; returns the policy name."""
    import keras

    policy = "mixed_bfloat16" if precision == "bf16" and gpu else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def reset_peak_memory(gpu: bool) -> None:
    """Reset the peak-memory counter where the backend allows it (TensorFlow, PyTorch; not JAX)."""
    if not gpu:
        return
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats("GPU:0")
        elif backend == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
    except (RuntimeError, ValueError, AttributeError):
        pass


def peak_memory_bytes(gpu: bool) -> int | None:
    """Peak GPU memory in use on device 0 (JAX: since start, it cannot be reset), or None."""
    if not gpu:
        return None
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats()
            return int(stats["peak_bytes_in_use"]) if stats else None
        if backend == "torch":
            import torch

            return int(torch.cuda.max_memory_allocated())
    except (RuntimeError, ValueError, KeyError, AttributeError):
        return None
    return None


def versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    import keras

    out = {"python": platform.python_version(), "numpy": np.__version__, "keras": keras.__version__}
    backend = keras.backend.backend()
    mod = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if mod:
        out[mod] = __import__(mod).__version__
    try:
        import albumentations
        import cv2

        out["albumentations"] = albumentations.__version__
        out["opencv"] = cv2.__version__
    except ImportError:
        pass
    return out


# --------------------------------------------------------------------------- keras paths


def run_keras(args: argparse.Namespace) -> dict[str, Any]:
    """Measure paths (a) and (b); return their results and the setup."""
    import keras

    from medxcept.images.augment import AugmentConfig, build_augment
    from medxcept.images.dataset import CohortDataset
    from medxcept.models.network import build_model, detect_device, resolve_weights

    class ConstantBatches(keras.utils.PyDataset):
        """The same pre-made batch ``n`` times: the model alone, no input pipeline."""

        def __init__(self, x: np.ndarray, y: np.ndarray | None, n: int) -> None:
            super().__init__()
            self.x, self.y, self.n = x, y, n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> tuple:
            return (self.x,) if self.y is None else (self.x, self.y)

    class LoopedCohort(CohortDataset):
        """A CohortDataset whose epoch is ``n_batches`` long, cycling over its full batches.

        Every batch costs what a real one costs (fancy index + augmentation + cast); only the
        epoch is made long enough for warm-up + timed steps without an epoch boundary.
        """

        def __init__(self, *a: Any, n_batches: int, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.n_batches = n_batches
            self.base_len = len(self._order) // self.batch_size

        def __len__(self) -> int:
            return self.n_batches

        def __getitem__(self, i: int) -> tuple:
            return super().__getitem__(i % self.base_len)

    class StepTimer(keras.callbacks.Callback):
        """Start when the last warm-up step's logs reach the host; stop at the end of fit/predict."""

        def __init__(self, warmup: int) -> None:
            super().__init__()
            self.async_safe = True  # JAX/torch: run off the training thread, never stall it
            self.warmup = warmup
            self.t0: float | None = None
            self.t1: float | None = None

        def _batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch == self.warmup - 1:
                for v in (logs or {}).values():
                    keras.ops.convert_to_numpy(v)  # device sync (already floats under TF)
                self.t0 = time.perf_counter()

        def _end(self, logs: dict | None = None) -> None:
            self.t1 = time.perf_counter()

        on_train_batch_end = _batch_end
        on_predict_batch_end = _batch_end
        on_train_end = _end
        on_predict_end = _end

        def rate(self, steps: int, batch: int) -> float:
            if self.t0 is None or self.t1 is None or self.t1 <= self.t0:
                return float("nan")
            return steps * batch / (self.t1 - self.t0)

    n_devices = maybe_data_parallel()
    gpu = gpu_visible()
    policy = set_precision(args.precision, gpu)
    device = detect_device()
    keras.utils.set_random_seed(0)

    n_batches = args.warmup + args.steps
    t0 = time.perf_counter()
    n_unique = min(args.pool, max(args.batch, 8))
    unique, uy = fundus_pool(n_unique, args.px)
    n_pool = args.batch * math.ceil(max(args.pool, args.batch) / args.batch)
    idx = np.arange(n_pool) % n_unique
    images, y = unique[idx], uy[idx]
    pool_s = time.perf_counter() - t0

    # Under JAX, jit_compile=False means op-by-op eager execution (several times slower than the
    # compiled step even on CPU, and not what anyone trains with): auto compiles there always.
    jit = args.jit == "on" or (args.jit == "auto" and (gpu or keras.backend.backend() == "jax"))
    model = build_model(image_px=args.px, n_classes=2, weights=resolve_weights("none"))
    # As medxcept.models.train compiles it (label smoothing 0.1, AdamW), plus XLA.
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-4),
        loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1),
        metrics=[keras.metrics.AUC(from_logits=True, name="auc"),
                 keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")],
        jit_compile=jit,
        steps_per_execution=args.steps_per_execution,
    )
    xb = images[:args.batch].copy()
    yb = y[:args.batch].astype(np.float32)[:, None]

    results: dict[str, dict[str, Any]] = {}
    # (a) the model alone
    reset_peak_memory(gpu)
    wall: dict[str, float] = {"build": time.perf_counter() - t0 - pool_s}
    tt, ti = StepTimer(args.warmup), StepTimer(args.warmup)
    t = time.perf_counter()
    model.fit(ConstantBatches(xb, yb, n_batches), epochs=1, verbose=0, callbacks=[tt])
    wall["a_fit"] = time.perf_counter() - t
    t = time.perf_counter()
    model.predict(ConstantBatches(xb, None, n_batches), verbose=0, callbacks=[ti])
    wall["a_predict"] = time.perf_counter() - t
    results["a"] = {"train": tt.rate(args.steps, args.batch), "infer": ti.rate(args.steps, args.batch),
                    "peak": peak_memory_bytes(gpu)}

    # (b) the full medxcept path: CohortDataset + augmentation + worker threads
    reset_peak_memory(gpu)
    train_ds = LoopedCohort(images, y, n_classes=2, batch_size=args.batch,
                            augment=build_augment(AugmentConfig(), seed=0), shuffle=True, balance="none",
                            seed=0, workers=args.workers, use_multiprocessing=False, n_batches=n_batches)
    tt, ti = StepTimer(args.warmup), StepTimer(args.warmup)
    t = time.perf_counter()
    model.fit(train_ds, epochs=1, verbose=0, callbacks=[tt])
    wall["b_fit"] = time.perf_counter() - t
    pred_ds = LoopedCohort(images, y, n_classes=2, batch_size=args.batch, with_labels=False,
                           workers=args.workers, use_multiprocessing=False, n_batches=n_batches)
    t = time.perf_counter()
    model.predict(pred_ds, verbose=0, callbacks=[ti])
    wall["b_predict"] = time.perf_counter() - t
    results["b"] = {"train": tt.rate(args.steps, args.batch), "infer": ti.rate(args.steps, args.batch),
                    "peak": peak_memory_bytes(gpu)}
    return {"paths": results, "policy": policy, "device": device, "n_devices": n_devices, "jit": jit,
            "pool_seconds": pool_s, "wall_seconds": wall, "n_unique_images": n_unique, "versions": versions()}


# --------------------------------------------------------------------------- timm


def timm_available() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("timm") is not None


def run_timm(px: int, batch: int, steps: int, warmup: int, precision: str, compile_: bool) -> dict[str, Any]:
    """timm ``legacy_xception``: train and inference img/s (runs in its own process)."""
    import timm
    import torch

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    amp = precision == "bf16" and cuda
    torch.manual_seed(0)
    model = timm.create_model("legacy_xception", pretrained=False, num_classes=1)
    model = model.to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(0)
    # uint8 NHWC on the host, copied every step like a DataLoader batch (pinned, non-blocking)
    x_host = torch.from_numpy(rng.integers(0, 256, (batch, px, px, 3), dtype=np.uint8))
    y = torch.from_numpy((np.arange(batch) % 3 == 0).astype(np.float32)[:, None]).to(dev)
    if cuda:
        x_host = x_host.pin_memory()
    net = torch.compile(model) if compile_ else model

    def inputs() -> Any:
        x = x_host.to(dev, non_blocking=True).permute(0, 3, 1, 2)  # NHWC memory = channels_last
        return (x.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def train_step() -> None:
        with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(net(inputs()).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=amp):
            net(inputs())

    def timed(step: Any) -> float:
        for _ in range(warmup):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        return steps * batch / (time.perf_counter() - t0)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train()
    train = timed(train_step)
    model.eval()
    infer = timed(infer_step)
    return {"train": train, "infer": infer, "peak": int(torch.cuda.max_memory_allocated()) if cuda else None,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "amp_bf16": amp, "compile": compile_,
            "torch": torch.__version__, "timm": timm.__version__}


def timm_subprocess(args: argparse.Namespace) -> dict[str, Any] | str:
    """Run :func:`run_timm` in a fresh interpreter; return its result or why it failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--timm-worker", "--px", str(args.px),
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--precision", args.precision] + (["--compile"] if args.compile else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timm_timeout)
    except subprocess.TimeoutExpired:
        return f"timm run exceeded {args.timm_timeout} s"
    for line in proc.stdout.splitlines():
        if line.startswith(TIMM_MARK):
            return json.loads(line[len(TIMM_MARK):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return f"timm run failed (exit {proc.returncode}): " + " | ".join(tail)


# --------------------------------------------------------------------------- report


def _fmt_rate(v: float | None) -> str:
    return "skipped" if v is None else ("n/a" if not math.isfinite(v) else f"{v:.2f}")


def _fmt_mem(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return None
    return num / den


def print_report(args: argparse.Namespace, k: dict[str, Any], timm: dict[str, Any] | str | None) -> None:
    dev = k["device"]
    print(f"backend: {dev['backend']}  device: {dev['device']}{(' (' + dev['detail'] + ')') if dev['detail'] else ''}"
          f"  devices used: {k['n_devices']}")
    print("versions: " + ", ".join(f"{n} {v}" for n, v in k["versions"].items())
          + (f", torch {timm['torch']}, timm {timm['timm']}" if isinstance(timm, dict) else ""))
    why = "" if k["policy"] == "mixed_bfloat16" else (
        " (bf16 requested but no GPU visible)" if args.precision == "bf16" else "")
    print(f"precision: {k['policy']}{why}; {args.px} px, batch {args.batch}, {args.steps} timed steps after "
          f"{args.warmup} warm-up; jit_compile={k['jit']}, steps_per_execution={args.steps_per_execution}, "
          f"workers={args.workers}; fundus pool {k['n_unique_images']} unique images ({k['pool_seconds']:.1f} s)")
    if isinstance(timm, dict):
        print(f"timm: {timm['device']}, autocast bf16={timm['amp_bf16']}, torch.compile={timm['compile']}")
    print()
    rows = [("(a) medxcept model, in-memory uint8", k["paths"]["a"]),
            ("(b) medxcept full path (CohortDataset)", k["paths"]["b"])]
    c = timm if isinstance(timm, dict) else {"train": None, "infer": None, "peak": None}
    rows.append(("(c) timm legacy_xception (PyTorch)", c))
    print(f"{'path':<40} {'train img/s':>12} {'infer img/s':>12} {'peak memory':>12}")
    for name, r in rows:
        print(f"{name:<40} {_fmt_rate(r['train']):>12} {_fmt_rate(r['infer']):>12} {_fmt_mem(r['peak']):>12}")
    if k["device"]["backend"] == "jax" and k["paths"]["a"]["peak"] is not None:
        print("(JAX cannot reset its peak counter: the peak of (b) is the peak of (a) and (b) together)")
    if not isinstance(timm, dict):
        print(f"(c): {timm}")
    print()
    a, b = k["paths"]["a"], k["paths"]["b"]
    checks = [
        ("(a)/(c) train", _ratio(a["train"], c["train"]), TARGET_TRAIN_VS_TIMM),
        ("(b)/(a) train", _ratio(b["train"], a["train"]), TARGET_FULL_VS_MODEL),
        ("(a)/(c) inference", _ratio(a["infer"], c["infer"]), TARGET_INFER_VS_TIMM),
    ]
    for name, ratio, target in checks:
        if ratio is None:
            print(f"{name:<20} n/a      (target >= {target:.2f}x): n/a")
        else:
            print(f"{name:<20} {ratio:6.2f}x  (target >= {target:.2f}x): {'PASS' if ratio >= target else 'FAIL'}")
    w = k["wall_seconds"]
    print("wall time of each call, compilation included: " + ", ".join(f"{n} {v:.1f} s" for n, v in w.items()))
    if k["device"]["device"] != "gpu":
        print("no GPU visible: these are CPU figures, not a test of the targets")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = parser.add_argument_group("workload")
    g.add_argument("--smoke", action="store_true",
                   help="tiny run (71 px, batch 4, 2 steps after 1 warm-up, 8 images): checks it works, on any device")
    g.add_argument("--px", type=int, default=299, help="image size (>= 71)")
    g.add_argument("--batch", type=int, default=64, help="global batch size")
    g.add_argument("--steps", type=int, default=50, help="timed steps")
    g.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, autotuning)")
    g.add_argument("--pool", type=int, default=256, help="images in (b)'s in-memory array (at most 64 unique)")
    g = parser.add_argument_group("execution")
    g.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    g.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                   help="jit_compile (XLA) for the Keras model; auto: on when a GPU is visible or the backend is "
                        "JAX (whose non-jit mode is op-by-op eager), off for TensorFlow on CPU (XLA "
                        "compilation of Xception takes minutes on a small CPU)")
    g.add_argument("--steps-per-execution", type=int, default=1, help="Keras steps per compiled call")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="CohortDataset worker threads")
    g = parser.add_argument_group("timm")
    g.add_argument("--skip-timm", action="store_true", help="do not run the timm comparison")
    g.add_argument("--compile", action="store_true", help="torch.compile the timm model")
    g.add_argument("--timm-timeout", type=int, default=1200, help="seconds before the timm run is abandoned")
    g.add_argument("--timm-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.px, args.batch, args.steps, args.warmup = 71, 4, 2, 1
        args.pool = min(args.pool, 8)
        args.workers = min(args.workers, 2)
    if args.px < 71 or args.batch < 1 or args.steps < 1 or args.warmup < 1 or args.workers < 1:
        parser.error("need --px >= 71, --batch >= 1, --steps >= 1, --warmup >= 1 (it also absorbs "
                     "compilation) and --workers >= 1")
    if args.steps_per_execution < 1 or (args.warmup % args.steps_per_execution
                                        or args.steps % args.steps_per_execution):
        parser.error("--warmup and --steps must be multiples of --steps-per-execution")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.timm_worker:
        res = run_timm(args.px, args.batch, args.steps, args.warmup, args.precision, args.compile)
        print(TIMM_MARK + json.dumps(res), flush=True)
        return 0
    # timm first, in its own process, before this one initializes a GPU framework
    if args.skip_timm:
        timm: dict[str, Any] | str = "skipped (--skip-timm)"
    elif not timm_available():
        timm = "timm not available: skipped"
        print(timm)
    else:
        timm = timm_subprocess(args)
    k = run_keras(args)
    print_report(args, k, timm)
    if args.json:
        args.json.write_text(json.dumps({"args": {n: (str(v) if isinstance(v, Path) else v)
                                                  for n, v in vars(args).items()},
                                         "keras": k, "timm": timm}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
