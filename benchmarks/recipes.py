"""What does the fine-tuning recipe buy on a small cohort, when pretrained weights exist? Measured here
without downloading anything.

ImageNet weights cannot be had on every machine (nor in CI), and from random initialization the
tutorial recipe trains a head on a frozen *random* base, which says nothing about fine-tuning. So
this benchmark makes its own pretrained weights the way ImageNet weights are made, only smaller:

1. **Source checkpoint.** Xception, trained from random initialization on a large, varied
   synthetic *source* task: ``--source-images`` generated images (fundus-like photographs of the
   demo's three cameras without any lesion, and gray radiograph-like images without any opacity,
   with random tint and brightness), each carrying one large drawn shape, labelled by the shape's
   kind (ring, square, cross, triangle; random size, position, rotation, contrast). The source
   labels are *not* the targets' findings, and the source never shows an exudate or an opacity.
   The Xception base's weights are saved to ``$MEDXCEPT_CACHE/recipes/`` (outside the
   repository), built on first use and reused (the file name holds the sizes and the seed).
2. **Targets.** Two small cohorts the source never saw, written as files and run through the whole
   pipeline (``medxcept.workflows.single.run_pipeline``: ingestion, patient-level split, audit,
   preprocessing, training, calibration, evaluation): ``fundus`` is the demo generator's
   referable-exudate finding (colour photographs, both eyes, repeat visits) with the demo's hard
   settings of ``cohorts/demo.yaml`` (mild cases with few faint lesions, drusen on healthy eyes,
   patient-level pigmentation, 3 % label noise: with the default settings every arm scored AUC
   ~1.0, which cannot tell recipes apart), ``gray`` a gray radiograph-like image with a planted soft
   opacity (one or two images per patient).
3. **Arms**, same split (``split.seed=0``), training seeds 0, 1, 2 each:
   ``default`` (the limited-data recipe with ``--weights <source checkpoint>``), ``baseline``
   (``--recipe baseline`` with the same weights) and ``scratch`` (the default recipe with
   ``--weights none``).
4. **Comparison** through :mod:`medxcept.evaluation.compare` (the code behind ``python -m pipelines.compare``):
   patient-level test AUC with its bootstrap CI, ECE after recalibration, the train - validation
   AUC gap at the kept epoch, training seconds (each run's, and mean ± SD), parameters; mean ± SD
   over seeds; per seed pair DeLong's test, and a paired t-test over the seeds' AUCs; the module's
   noise verdict.
5. **Backbones** (``--backbones``, :mod:`medxcept.models.backbones`): every arm for each backbone,
   same split and seeds; an arm of another backbone than Xception is named ``<arm>@<backbone>``
   (``scratch@densenet121``), its pretrained arms start from a source checkpoint of that backbone
   trained the same way. So "is Xception the right network for 300 images?" is one command.

Usage::

    nice -n 10 python -m benchmarks.recipes                     # the measurement (hours on 2 busy cores)
    python -m benchmarks.recipes --summarize                    # the table again, from the finished runs
    python -m benchmarks.recipes --bn-check                     # from scratch: BN moving averages vs recalibrated
    python -m benchmarks.recipes --quick                        # smoke run (tiny sizes, 1 seed)
    python -m benchmarks.recipes --arms default baseline --cohorts gray
    # backbones side by side (a GPU machine: all four, 3 seeds, pretrained on the source task and from scratch)
    python -m benchmarks.recipes --backbones xception densenet121 efficientnetv2b0 resnet50 --arms default scratch

It prints the table and writes ``recipes-<cohorts>.json`` (every run's numbers) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from scipy import ndimage, stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medxcept.cohort.demo import CAMERAS, cache_dir, paint_fundus  # noqa: E402
from medxcept.models.backbones import names as backbone_names  # noqa: E402

SHAPES = ("ring", "square", "cross", "triangle")
SOURCE_VERSION = 1
TARGET_VERSION = 1

# ------------------------------------------------------------------ images


def paint_gray(rng: np.random.Generator, size: int, *, opacity: bool) -> np.ndarray:
    """A gray radiograph-like image (float in [0, 1], ``size`` x ``size``): two dark lung fields, a
    bright mediastinum, ribs, noise; with ``opacity``, one soft brighter blob inside a lung field."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.62 + 0.10 * (yy - 0.5) + 0.06 * _noise(rng, size, 0.08 * size)
    lungs = np.zeros_like(img)
    centres = []
    for side in (-1, 1):
        cy, cx = 0.50 + rng.normal(0, 0.02), 0.5 + side * rng.uniform(0.19, 0.23)
        ry, rx = rng.uniform(0.30, 0.36), rng.uniform(0.13, 0.17)
        lungs = np.maximum(lungs, np.clip(1.2 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2, 0, 1))
        centres.append((cy, cx, ry, rx))
    lungs = ndimage.gaussian_filter(lungs, 0.02 * size)
    img = img - rng.uniform(0.28, 0.36) * lungs
    phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(9, 12)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (yy + 0.15 * np.abs(xx - 0.5)) + phase)
    img = img + rng.uniform(0.05, 0.08) * ribs ** 4 * lungs
    if opacity:
        cy, cx, ry, rx = centres[int(rng.integers(0, 2))]
        oy, ox = cy + rng.uniform(-0.5, 0.5) * ry, cx + rng.uniform(-0.5, 0.5) * rx
        sigma = rng.uniform(0.035, 0.06)
        img = img + rng.uniform(0.10, 0.16) * np.exp(-((yy - oy) ** 2 + (xx - ox) ** 2) / (2 * sigma ** 2)) * lungs
    img = ndimage.gaussian_filter(img, 0.006 * size) + rng.normal(0, 0.015, img.shape)
    return np.clip(img * rng.uniform(0.85, 1.1), 0, 1).astype(np.float32)


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return field / (np.abs(field).max() + 1e-8)


def _shape_mask(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A soft-edged mask of one shape of random size, position and rotation."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = rng.uniform(0.12, 0.24)
    cy, cx = rng.uniform(0.25, 0.75, 2)
    a = rng.uniform(0, 2 * np.pi)
    u = ((xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)) / r
    v = (-(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)) / r
    if kind == "ring":
        d = np.hypot(u, v)
        m = (d < 1.0) & (d > rng.uniform(0.5, 0.7))
    elif kind == "square":
        m = (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    elif kind == "cross":
        w = rng.uniform(0.2, 0.3)
        m = ((np.abs(u) < w) & (np.abs(v) < 1.0)) | ((np.abs(v) < w) & (np.abs(u) < 1.0))
    else:  # triangle: inside three half-planes
        m = np.ones_like(u, dtype=bool)
        for k in range(3):
            t = 2 * np.pi * k / 3
            m &= (u * np.cos(t) + v * np.sin(t)) < 0.5
    return ndimage.gaussian_filter(m.astype(np.float32), 0.004 * size + 0.4)


def source_images(n: int, px: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` source images (uint8, ``px`` x ``px`` x 3) and their shape labels (0..3)."""
    from PIL import Image

    rng = np.random.default_rng([seed, SOURCE_VERSION])
    x = np.empty((n, px, px, 3), dtype=np.uint8)
    y = rng.integers(0, len(SHAPES), n)
    for i in range(n):
        if rng.random() < 0.5:
            cam = CAMERAS[int(rng.integers(0, len(CAMERAS)))]
            rgb, _, g = paint_fundus(rng, cam, laterality=str(rng.choice(["L", "R"])), referable=False,
                                     scale=0.45)
            r = int(g["r"])
            cy, cx = int(g["cy"]), int(g["cx"])
            crop = rgb[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r]
            base = np.asarray(Image.fromarray(crop).resize((px, px), Image.BILINEAR), dtype=np.float32) / 255
        else:
            g = paint_gray(rng, px, opacity=False)
            base = g[..., None] * rng.uniform(0.85, 1.15, 3).astype(np.float32)
        mask = _shape_mask(rng, px, SHAPES[y[i]])[..., None]
        colour = rng.uniform(0, 1, 3).astype(np.float32) if rng.random() < 0.5 else np.full(3, rng.uniform(0, 1))
        alpha = rng.uniform(0.35, 0.8)
        img = base * (1 - alpha * mask) + colour * alpha * mask
        x[i] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return x, y


# ------------------------------------------------------------------ the source checkpoint


def source_checkpoint(*, n_images: int, epochs: int, px: int, seed: int = 0,
                      backbone: str = "xception") -> tuple[Path, dict]:
    """The backbone (Xception by default) trained on the source task, as a ``.weights.h5`` file of its base
    (built once, cached)."""
    folder = cache_dir() / "recipes"
    net = "" if backbone == "xception" else f"-{backbone}"  # Xception's file keeps its name
    path = folder / f"source-v{SOURCE_VERSION}{net}-n{n_images}-e{epochs}-px{px}-s{seed}.weights.h5"
    info_path = path.with_suffix("").with_suffix(".json")
    if path.is_file() and info_path.is_file():
        return path, json.loads(info_path.read_text())
    import keras

    from medxcept.models.network import backbone_base, build_model, resolve_weights
    from medxcept.models.train import set_seeds

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    x, y = source_images(n_images, px, seed)
    n_val = max(n_images // 10, len(SHAPES))
    xv, yv, xt, yt = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    t_gen = time.perf_counter() - t0
    set_seeds(seed)
    model = build_model(image_px=px, n_classes=len(SHAPES), dropout=0.2, weights=resolve_weights("none"), seed=seed,
                        backbone=backbone)
    steps = int(np.ceil(len(xt) / 32)) * epochs
    sched = keras.optimizers.schedules.CosineDecay(1e-4, steps, alpha=0.01, warmup_target=1e-3,
                                                   warmup_steps=max(steps // 10, 1))
    model.compile(optimizer=keras.optimizers.AdamW(sched, weight_decay=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    flips = np.random.default_rng([seed, 5])
    for _ in range(epochs):  # horizontal flips keep the shape's kind
        flip = flips.random(len(xt)) < 0.5
        xe = np.where(flip[:, None, None, None], xt[:, :, ::-1], xt)
        model.fit(xe, yt, batch_size=32, epochs=1, verbose=0, shuffle=True)
    t_train = time.perf_counter() - t0 - t_gen
    acc = float(np.mean(np.argmax(model.predict(xv, batch_size=64, verbose=0), axis=1) == yv))
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    backbone_base(model).save_weights(tmp)
    os.replace(tmp, path)
    info = {"backbone": backbone, "n_images": n_images, "epochs": epochs, "px": px, "seed": seed,
            "classes": list(SHAPES),
            "held_out_accuracy": acc, "n_held_out": int(n_val), "generate_s": round(t_gen, 1),
            "train_s": round(t_train, 1)}
    info_path.write_text(json.dumps(info, indent=1))
    return path, info


# ------------------------------------------------------------------ target cohorts


def write_gray_cohort(root: Path, *, n_patients: int, seed: int, size: int = 128) -> Path:
    """A gray cohort as PNG files with a label table: one or two images per patient, ~40 % with an opacity."""
    from PIL import Image

    if (root / "COMPLETE").exists():
        return root / "cohort.yaml"
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, TARGET_VERSION, 31])
    rows = ["file,label,patient,visit"]
    for p in range(n_patients):
        positive = rng.random() < 0.4
        for v in range(1 + int(rng.random() < 0.6)):
            name = f"g{p:04d}_{v}.png"
            img = paint_gray(rng, size, opacity=positive)
            Image.fromarray((img * 255 + 0.5).astype(np.uint8), mode="L").save(root / "images" / name)
            rows.append(f"{name},{'opacity' if positive else 'clear'},G{p:04d},{v + 1}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "cohort.yaml").write_text(
        "name: bench-gray\ndescription: synthetic gray radiograph-like images with a planted opacity\n"
        "classes: [clear, opacity]\npositive_class: opacity\nmodality: gray\n"
        "pseudonym_salt: medxcept-benchmark-not-secret\non_label_issue: error\n"
        "sources:\n  - name: png\n    kind: photos\n    root: images\n    labels: labels.csv\n"
        "    file_column: file\n    label_column: label\n    patient_column: patient\n    visit_column: visit\n"
        "defaults:\n  augment: {policy: radiograph}\n")
    (root / "COMPLETE").write_text("")
    return root / "cohort.yaml"


def write_fundus_cohort(root: Path, *, n_patients: int, seed: int) -> Path:
    """A cohort file for the demo generator's referable-exudate finding, at another seed and size."""
    root.mkdir(parents=True, exist_ok=True)
    demo_yaml = (Path(__file__).resolve().parents[1] / "cohorts" / "demo.yaml").read_text()
    text = demo_yaml.split("\ndefaults:")[0].replace("name: demo", "name: bench-fundus", 1)
    # the demo's hard options (mild cases, drusen, pigmentation, label noise) stay as the demo sets them
    text = text.replace("generator_options: {n_patients: 110, seed: 7,",
                        f"generator_options: {{n_patients: {n_patients}, seed: {seed}, size_scale: 0.5,", 1)
    assert f"n_patients: {n_patients}" in text and "min_severity" in text, \
        "cohorts/demo.yaml changed: update write_fundus_cohort"
    (root / "cohort.yaml").write_text(text + "\n")
    return root / "cohort.yaml"


# ------------------------------------------------------------------ runs


ARMS = {  # arm -> (recipe, pretrained?, configuration overrides)
    "default": ("default", True, {}),
    "baseline": ("baseline", True, {}),
    "scratch": ("default", False, {}),
    # from scratch as before BN recalibration: BN moving averages only (momentum 0.9)
    "scratch-ema": ("default", False, {"train.bn_recalibration": False}),
}


def arm_name(arm: str, backbone: str) -> str:
    """``arm`` for Xception (the names of runs made before backbones could vary), else ``arm@backbone``."""
    return arm if backbone == "xception" else f"{arm}@{backbone}"


def run_arm(cohort_yaml: Path, out: Path, *, arm: str, seed: int, px: int, weights: Path | None,
            overrides: dict, backbone: str = "xception") -> Path:
    """One finished run directory (reused when it is already complete)."""
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.config import load_config
    from medxcept.workflows.single import run_pipeline

    recipe, pretrained, arm_overrides = ARMS[arm]
    name = f"{arm_name(arm, backbone)}-s{seed}"
    run_dir = out / name
    if (run_dir / "complete.json").is_file():
        return run_dir
    if run_dir.exists():  # an interrupted benchmark run: start it again
        shutil.rmtree(run_dir)
    spec = load_cohort_spec(cohort_yaml)
    cfg = load_config(cohort_defaults=spec.defaults, overrides={
        "seed": seed, "split.seed": 0, "out_dir": str(out), "preprocess.image_px": px,
        "model.weights": str(weights) if pretrained else "none", "train.recipe": recipe, "model.backbone": backbone,
        "eval.n_bootstrap": 300, **arm_overrides, **overrides})
    run_pipeline(cfg, spec, run_name=name)
    return run_dir


def _fmt(values: list[float | None], digits: int = 3) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return "n/a"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def summarize(cohort: str, run_dirs: dict[str, list[Path]]) -> dict:
    """Load the runs, compare every pair of arms through medxcept.evaluation.compare, print the table.

    The gap is the training verdict's (:func:`medxcept.evaluation.verdict.training_verdict`): clean training
    patient AUC - validation patient AUC at the kept epoch (Keras' running AUC for runs without
    ``train_patient_auc``). ``cases`` counts the verdict's case per run (fine, underfitting, ...).
    """
    from collections import Counter

    from medxcept.evaluation.compare import compare, load_run
    from medxcept.evaluation.verdict import training_verdict

    records = {arm: [dataclasses.replace(load_run(d), group=arm, name=f"{arm}:{d.name}") for d in dirs]
               for arm, dirs in run_dirs.items()}
    n_test = len(next(iter(records.values()))[0].patients)
    lines = [f"\n== {cohort}: test set {n_test} patients"]
    w = max(9, *(len(a) for a in records))
    lines.append(f"{'arm':{w}} {'patient AUC':>15} {'95% CI (per seed)':>40} {'ECE after':>15} {'AUC gap':>15} "
                 f"{'kept epoch':>10} {'train s':>12} {'train s per run':>18} {'params':>8} {'collapsed':>9}  verdicts")
    table, markdown = {}, []
    for arm, recs in records.items():
        s = [r.summary for r in recs]
        cis = " ".join(f"[{x['roc_auc_low']:.2f},{x['roc_auc_high']:.2f}]" for x in s
                       if x["roc_auc_low"] is not None)
        collapsed = sum(bool(_collapsed_epochs(r)) for r in recs)
        cases = Counter(training_verdict(r.history, r.summary["best_epoch"])["case"] for r in recs)
        case_text = ", ".join(f"{k} {v}" for k, v in sorted(cases.items()))
        row = {k: [x[k] for x in s] for k in ("roc_auc", "ece_after", "auc_gap", "best_epoch", "train_seconds")}
        params = {_parameters(d) for d in run_dirs[arm]} - {None}
        row.update(collapsed_runs=collapsed, cases=dict(cases), seeds=[r.seed for r in recs],
                   ci=[(x["roc_auc_low"], x["roc_auc_high"]) for x in s], parameters=sorted(params))
        table[arm] = row
        per_run = "/".join(f"{x:.0f}" for x in row["train_seconds"] if x is not None)
        n_params = "/".join(f"{p / 1e6:.1f}M" for p in sorted(params)) or "n/a"
        lines.append(f"{arm:{w}} {_fmt(row['roc_auc']):>15} {cis:>40} {_fmt(row['ece_after']):>15} "
                     f"{_fmt(row['auc_gap']):>15} {_fmt(row['best_epoch'], 1):>10} "
                     f"{_fmt(row['train_seconds'], 0):>12} {per_run:>18} {n_params:>8} {collapsed:>5}/{len(recs)}  "
                     f"{case_text}")
        markdown.append(f"| {cohort} ({n_test}) | {arm} | {len(recs)} | {_fmt(row['roc_auc'])} | "
                        f"{_fmt(row['ece_after'])} | {_fmt(row['auc_gap'], 2)} | {_fmt(row['train_seconds'], 0)} | "
                        f"{per_run} | {n_params} | {collapsed}/{len(recs)} | {case_text} |")
    result = compare([r for recs in records.values() for r in recs], n_resamples=300)
    tests = []
    for c in result["comparisons"]:
        a, b = c["a"], c["b"]
        auc_a = {r.seed: r.summary["roc_auc"] for r in records[a]}
        auc_b = {r.seed: r.summary["roc_auc"] for r in records[b]}
        seeds = [s for s in c["seeds"] if auc_a.get(s) is not None and auc_b.get(s) is not None]
        d = [auc_b[s] - auc_a[s] for s in seeds]
        t_p = float(stats.ttest_rel([auc_b[s] for s in seeds], [auc_a[s] for s in seeds]).pvalue) \
            if len(seeds) > 1 and np.std(d) > 0 else None
        delong = [p["delong"]["p_value"] for p in c["pairs"]]
        v = c["verdicts"]["roc_auc"]
        tests.append({"a": a, "b": b, "seeds": seeds, "diff_per_seed": d, "delong_p_per_seed": delong,
                      "paired_t_p": t_p, "verdict": v["verdict"] if "verdict" in v else v.get("sentence")})
        lines.append(f"  {b} - {a}: AUC diff per seed {', '.join(f'{x:+.3f}' for x in d)}; DeLong p "
                     f"{', '.join('n/a' if p is None else f'{p:.3f}' for p in delong)}; paired t over seeds p "
                     f"{'n/a' if t_p is None else f'{t_p:.3f}'}; {v.get('sentence', '')}")
    print("\n".join(lines), flush=True)
    return {"cohort": cohort, "table": table, "tests": tests, "markdown": markdown}


def bn_check(*, n: int = 121, px: int = 71, epochs: int = 8, seed: int = 0) -> None:
    """From random initialization, are inference-mode outputs constant with BN moving averages only?

    ``n`` gray images with the planted opacity (2/3 train, 1/3 validation), the default recipe's
    from-scratch optimizer (AdamW, warm-up + cosine, label smoothing, batch 16, BN momentum 0.9).
    After each epoch: the SD and AUC of the validation probabilities with the moving averages as
    training left them, and after :func:`medxcept.models.epoch_eval.recalibrate_batchnorm` (the moving averages
    are put back afterwards, so both columns follow one training trajectory).
    """
    import keras
    from sklearn.metrics import roc_auc_score

    from medxcept.models.epoch_eval import _probs, recalibrate_batchnorm
    from medxcept.models.inference import predict_logits
    from medxcept.models.network import build_model, resolve_weights
    from medxcept.models.train import _schedule

    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    x = np.stack([np.repeat((paint_gray(rng, px, opacity=bool(t)) * 255)[..., None], 3, -1) for t in y])
    x = x.astype(np.uint8)
    tr, va = np.arange(2 * n // 3), np.arange(2 * n // 3, n)
    keras.utils.set_random_seed(seed)
    m = build_model(image_px=px, n_classes=2, weights=resolve_weights("none"), seed=seed)
    steps = int(np.ceil(len(tr) / 16))
    m.compile(optimizer=keras.optimizers.AdamW(_schedule(1e-3, steps, epochs, 1), weight_decay=1e-4),
              loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.05))
    print(f"BN check: {len(tr)} training / {len(va)} validation gray images at {px} px, from scratch")
    for e in range(epochs):
        m.fit(x[tr], y[tr].astype("float32"), batch_size=16, epochs=1, verbose=0)
        p = _probs(predict_logits(m, x[va]))
        w = m.get_weights()
        recalibrate_batchnorm(m, x[tr], batch_size=16)
        q = _probs(predict_logits(m, x[va]))
        m.set_weights(w)
        print(f"  epoch {e + 1}: moving averages: SD {p.std():.1e}, AUC {roc_auc_score(y[va], p):.3f} | "
              f"recalibrated: SD {q.std():.1e}, AUC {roc_auc_score(y[va], q):.3f}", flush=True)


def _finished(folder: Path, arm: str) -> list[Path]:
    """The finished run directories ``<folder>/<arm>-s<seed>``."""
    return sorted(d for d in folder.glob(f"{arm}-s*") if d.name[len(arm) + 2:].isdigit()
                  and (d / "complete.json").is_file())


def _parameters(run_dir: Path) -> int | None:
    """The run's parameter count (``metrics.json`` run block; runs made before it was recorded: None)."""
    run = json.loads((run_dir / "metrics.json").read_text()).get("run") or {}
    return run.get("parameters")


def _collapsed_epochs(record) -> list[int]:
    h = record.history
    if "collapsed" not in h:
        return []
    return [int(e) for e, c in zip(h["epoch"], h["collapsed"], strict=True) if str(c).lower() in ("true", "1", "1.0")]


def _print_markdown(summaries: list[dict]) -> None:
    print("\n| cohort (test patients) | arm | seeds | patient AUC | ECE after | AUC gap | train s | train s per run "
          "| parameters | collapsed | verdicts |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(row for s in summaries for row in s["markdown"]), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.recipes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--px", type=int, default=71, help="image size of source and targets (default 71)")
    ap.add_argument("--source-images", type=int, default=2000, help="source task images (default 2000)")
    ap.add_argument("--source-epochs", type=int, default=3, help="source training epochs (default 3)")
    ap.add_argument("--fundus-patients", type=int, default=70, help="fundus target patients (~2.2 images each)")
    ap.add_argument("--gray-patients", type=int, default=100, help="gray target patients (~1.6 images each)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["default", "baseline", "scratch"], choices=list(ARMS),
                    help="default, baseline, scratch (default) and scratch-ema (from scratch without BN "
                         "recalibration, as before it existed)")
    ap.add_argument("--cohorts", nargs="+", default=["fundus", "gray"], choices=["fundus", "gray"])
    ap.add_argument("--backbones", nargs="+", default=["xception"], choices=backbone_names(),
                    help="run every arm for each of these backbones (default: xception only); arms of another "
                         "backbone are named ARM@BACKBONE")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="configuration override for every run (e.g. train.finetune_lr=3e-4)")
    ap.add_argument("--out", default=None, help="folder for the run directories (default: "
                    "$MEDXCEPT_CACHE/recipes/runs-<settings>)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one seed")
    ap.add_argument("--summarize", action="store_true",
                    help="train nothing: compare the finished runs found in --out (and --extra)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=DIR",
                    help="with --summarize: also the finished runs DIR/<cohort>/<ARM>-s<seed> as arm NAME; "
                         "NAME is an arm (more seeds of it, run elsewhere), NAME:ARM, or a new name for the "
                         "default arm (a recipe variant run with --set and its own --out)")
    ap.add_argument("--bn-check", action="store_true",
                    help="only the from-scratch BatchNormalization check (bn_check: ~10 min)")
    args = ap.parse_args(argv)
    if args.bn_check:
        bn_check(px=args.px)
        return 0
    if args.quick:
        args.source_images, args.source_epochs, args.seeds = 64, 1, [0]
        args.fundus_patients, args.gray_patients = 24, 30
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        overrides[k] = v
    t0 = time.perf_counter()
    sources: dict[str, Path | None] = {}
    info: dict = {}
    for backbone in args.backbones:  # only when an arm starts from it
        if not any(ARMS[arm][1] for arm in args.arms):
            sources[backbone] = None
            continue
        sources[backbone], info[backbone] = source_checkpoint(n_images=args.source_images, epochs=args.source_epochs,
                                                              px=args.px, backbone=backbone)
        i = info[backbone]
        print(f"source checkpoint: {sources[backbone].name}: {i['n_images']} images, {i['epochs']} epochs, "
              f"held-out shape accuracy {i['held_out_accuracy']:.3f} (n={i['n_held_out']}), "
              f"built in {i['generate_s'] + i['train_s']:.0f} s", flush=True)
    tag = "-".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "defaults"
    out = Path(args.out) if args.out else cache_dir() / "recipes" / f"runs-px{args.px}-{tag}"
    targets = cache_dir() / "recipes" / "targets"
    summaries = []
    if args.summarize:
        for cohort in args.cohorts:
            dirs = {arm_name(arm, b): _finished(out / cohort, arm_name(arm, b))
                    for b in args.backbones for arm in args.arms}
            for item in args.extra:
                name, _, folder = item.partition("=")
                arm = name.split(":")[-1]
                found = _finished(Path(folder) / cohort, arm if arm in ARMS else "default")
                key = name.split(":")[0]
                dirs[key] = sorted(dirs.get(key, []) + found, key=lambda d: d.name)
            dirs = {k: v for k, v in dirs.items() if v}
            summaries.append(summarize(cohort, dirs))
        _print_markdown(summaries)
        return 0
    for cohort in args.cohorts:
        if cohort == "gray":
            yaml_path = write_gray_cohort(targets / f"gray-n{args.gray_patients}", n_patients=args.gray_patients,
                                          seed=11)
        else:
            yaml_path = write_fundus_cohort(targets / f"fundus-n{args.fundus_patients}",
                                            n_patients=args.fundus_patients, seed=23)
        dirs: dict[str, list[Path]] = {}
        for backbone in args.backbones:
            for arm in args.arms:
                for seed in args.seeds:
                    t = time.perf_counter()
                    d = run_arm(yaml_path, out / cohort, arm=arm, seed=seed, px=args.px, weights=sources[backbone],
                                overrides=overrides, backbone=backbone)
                    dirs.setdefault(arm_name(arm, backbone), []).append(d)
                    print(f"  {cohort} {arm_name(arm, backbone)} seed {seed}: {time.perf_counter() - t:.0f} s wall",
                          flush=True)
        if sum(map(len, dirs.values())) > 1:  # one run (e.g. one seed of one arm): nothing to compare yet
            summaries.append(summarize(cohort, dirs))
    _print_markdown(summaries)
    wall = time.perf_counter() - t0
    print(f"\ntotal wall time {wall / 60:.1f} min on {os.cpu_count()} CPU core(s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"recipes-{'-'.join(args.cohorts)}.json").write_text(json.dumps({"source": info, "settings": vars(args), "results": summaries,
                                                   "wall_s": wall}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
