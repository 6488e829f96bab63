"""Xception before and after the backbone registry: the same model, the same weights, the same predictions.

Issue 32 moved the network behind a registry (:mod:`medxcept.models.backbones`). The default must not
change: this script builds the default model with the same seed from two source trees, the code
*before* the change (a ``git archive`` of the old commit) and this one, each in its own process, and
compares

1. the model: its name, every layer's name and class in order (``to_xception_range`` included);
2. the freshly built weights (SHA-256 of every array, the seed's initialization);
3. its logits on 8 fixed images (seeded uniform pixels);
4. after one epoch of :func:`medxcept.models.train.fit` from random initialization on 24 fixed images
   (the demo recipe's from-scratch path, BN recalibration included): the trained weights' SHA-256 and
   the logits on the same 8 images.

Usage::

    git archive acdae6a | (mkdir -p /tmp/before && tar -x -C /tmp/before)
    python -m benchmarks.xception_unchanged --before /tmp/before

Prints one table and exits 1 when the model or its initial weights differ. The trained logits may
differ by float summation order between processes; the largest difference is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_SIDE = r"""
import hashlib, json, os
import numpy as np
import keras
from medxcept.config import load_config
from medxcept.models.network import build_model, resolve_weights
from medxcept.models import train

def sha(model):
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]

rng = np.random.default_rng(0)
probe = rng.integers(0, 256, (8, 71, 71, 3)).astype("uint8")
keras.utils.set_random_seed(0)
model = build_model(image_px=71, n_classes=2, dropout=0.3, weights=resolve_weights("none"), seed=0)
out = {"name": model.name,
       "layers": [(l.name, type(l).__name__) for l in model.layers],
       "base_layers": hashlib.sha256(json.dumps([(l.name, type(l).__name__) for l in model.layers[2].layers]).encode()).hexdigest()[:16],
       "init_sha": sha(model),
       "init_logits": model.predict(probe, verbose=0).ravel().tolist()}
x = rng.integers(0, 256, (24, 71, 71, 3)).astype("uint8")
y = np.array([0, 1] * 12)
cfg = load_config(overrides={"preprocess.image_px": 71, "train.head_epochs": 1, "train.finetune_epochs": 0,
                             "train.batch_size": 8, "train.workers": 1, "train.warmup_epochs": 0})
res = train.fit(x[:16], y[:16], x[16:], y[16:], np.arange(8), cfg=cfg, weights=resolve_weights("none"), n_classes=2)
out["trained_sha"] = sha(res.model)
out["trained_logits"] = res.model.predict(probe, verbose=0).ravel().tolist()
print("RESULT " + json.dumps(out))
"""


def _side(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "MEDXCEPT_TEST_NETWORK": "", "TF_CPP_MIN_LOG_LEVEL": "3",
           "NO_ALBUMENTATIONS_UPDATE": "1", "MEDXCEPT_THREADS": os.environ.get("MEDXCEPT_THREADS", "2")}
    res = subprocess.run([sys.executable, "-c", _SIDE], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=1800)
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    if res.returncode or not lines:
        raise SystemExit(f"{tree}: failed\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, type=Path, help="source tree of the code before the change")
    parser.add_argument("--after", type=Path, default=REPO, help="source tree after (default: this one)")
    args = parser.parse_args(argv)
    before, after = _side(args.before), _side(args.after)
    import numpy as np

    rows = [("model name", before["name"], after["name"]),
            ("layers (name, class)", len(before["layers"]), len(after["layers"])),
            ("Xception layers hash", before["base_layers"], after["base_layers"]),
            ("initial weights SHA-256", before["init_sha"], after["init_sha"]),
            ("trained weights SHA-256 (1 epoch)", before["trained_sha"], after["trained_sha"])]
    same_model = before["layers"] == after["layers"] and before["name"] == after["name"]
    same_init = before["init_sha"] == after["init_sha"]
    d_init = float(np.max(np.abs(np.subtract(before["init_logits"], after["init_logits"]))))
    d_trained = float(np.max(np.abs(np.subtract(before["trained_logits"], after["trained_logits"]))))
    print(f"{'':36s} {'before':>20s} {'after':>20s}")
    for name, a, b in rows:
        print(f"{name:36s} {a!s:>20s} {b!s:>20s}  {'same' if a == b else 'DIFFERENT'}")
    print(f"largest |logit difference|, initial model on 8 fixed images: {d_init:.3g}")
    print(f"largest |logit difference|, after 1 epoch of train.fit:       {d_trained:.3g}")
    return 0 if same_model and same_init else 1


if __name__ == "__main__":
    raise SystemExit(main())
