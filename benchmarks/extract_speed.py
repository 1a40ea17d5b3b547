"""Feature-extraction speed: a plain timm eager loop vs ``headstart.extract_features`` (run by hand).

    python benchmarks/extract_speed.py [--n 512] [--batch 32] [--peak-n 10000]

On the same real JPEG files (random crops of ``skimage.data`` photos, 224-400 px, written to a temp
folder; the class of an image is the photo it was cut from) it measures:

(a) a plain loop: timm ``tf_efficientnet_lite0`` with headstart's EfficientNet-Lite0 weights, PIL
    decode + the same transform in the main process, ``forward_features`` + pooling, eval, no_grad;
(b) ``extract_features(..., cache=False)`` with ``runtime="auto"`` (OpenVINO fp32 when installed;
    after one warm-up call that exports the ONNX graph and verifies it, timed separately), and with
    ``runtime="onnx"`` (ONNX Runtime) and ``runtime="torch"`` for reference;

then prints images/s, the speed ratio, the largest absolute feature difference, whether logistic
regressions trained on each feature set agree on held-out items, the cache-hit time of a second
call, and the peak resident memory of extracting ``--peak-n`` images in a subprocess. Other
processes on the machine skew timings: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_jpegs(folder: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """``n`` JPEG files cut from skimage photos at random; returns paths, labels, class names."""
    from PIL import Image
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera"]
    photos = []
    for name in names:
        img = getattr(data, name)()
        img = img[0] if isinstance(img, tuple) else img
        photos.append(Image.fromarray(np.asarray(img)).convert("RGB"))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], rng.integers(0, len(photos), n)
    for i, c in enumerate(labels):
        im = photos[c]
        w, h = im.size
        cw, ch = (int(rng.uniform(0.35, 0.9) * s) for s in (w, h))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        side = int(rng.integers(224, 401))
        crop = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((side, int(side * rng.uniform(0.75, 1.33))), Image.BICUBIC)
        p = folder / f"img{i:05d}.jpg"
        crop.save(p, quality=90)
        paths.append(str(p))
    return paths, labels, names


def plain_timm_loop(bb, paths: list[str], batch: int) -> np.ndarray:
    """What one writes without headstart: eager timm, decode in the main process, no_grad."""
    import timm
    import torch
    from PIL import Image

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(bb.model.state_dict())
    model.eval()
    tf = bb.preprocessing.transform()
    out = []
    with torch.no_grad():
        for s in range(0, len(paths), batch):
            x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[s : s + batch]])
            out.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    return np.concatenate(out)


def agreement(fa: np.ndarray, fb: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Logistic regression on each feature set (same split): prediction agreement %, accuracy a, b."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    idx = np.random.default_rng(1).permutation(len(labels))
    tr, te = idx[: len(idx) // 2], idx[len(idx) // 2 :]
    preds = []
    for f in (fa, fb):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        preds.append(clf.fit(f[tr], labels[tr]).predict(f[te]))
    return 100 * float(np.mean(preds[0] == preds[1])), 100 * float(np.mean(preds[0] == labels[te])), 100 * float(np.mean(preds[1] == labels[te]))


_PEAK_CHILD = r"""
import json, resource, sys, threading, time, psutil
paths, cache_dir = json.load(open(sys.argv[1])), sys.argv[2]
from headstart.backbones.registry import create_backbone
from headstart.data.dataset import LabeledDataset
from headstart.features import extract_features
bb = create_backbone("efficientnet_lite0")
ds = LabeledDataset(paths, [0] * len(paths), ["x"])
me, peak, stop = psutil.Process(), [0, 0], False
def sample():
    while not stop:
        try:
            procs = [me] + me.children(recursive=True)
            peak[0] = max(peak[0], me.memory_info().rss)
            peak[1] = max(peak[1], sum(p.memory_full_info().pss for p in procs))
        except psutil.Error:
            pass
        time.sleep(0.25)
base = me.memory_info().rss
th = threading.Thread(target=sample, daemon=True); th.start()
t = time.perf_counter(); f = extract_features(bb, ds, batch_size=int(sys.argv[3]), cache_dir=cache_dir); dt = time.perf_counter() - t
t = time.perf_counter(); f2 = extract_features(bb, ds, batch_size=int(sys.argv[3]), cache_dir=cache_dir); hit = time.perf_counter() - t
stop = True; th.join()
print(json.dumps({"n": len(paths), "seconds": dt, "hit_seconds": hit, "same": bool((f == f2).all()), "base_rss": base,
    "maxrss_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "maxrss_children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    "sampled_peak_self": peak[0], "sampled_peak_sum": peak[1]}))
"""


def peak_memory(paths: list[str], n: int, batch: int, tmp: Path) -> dict:
    """Extract ``n`` images (the generated files, cycled) with the cache on, in a fresh process."""
    items = [paths[i % len(paths)] for i in range(n)]
    (tmp / "peak_paths.json").write_text(json.dumps(items))
    (tmp / "peak_child.py").write_text(_PEAK_CHILD)
    cmd = [sys.executable, str(tmp / "peak_child.py"), str(tmp / "peak_paths.json"), str(tmp / "peak_cache"), str(batch)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


class _RuntimeLog(logging.Handler):
    """Remembers the runtime headstart logs that it picked ("features: runtime NAME ...")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.name_seen = "?"

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("features: runtime "):
            self.name_seen = msg.split()[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="images for the speed comparison")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--peak-n", type=int, default=10000, help="images for the peak-memory run (0: skip)")
    args = ap.parse_args()

    from headstart.backbones.registry import create_backbone
    from headstart.data.dataset import LabeledDataset
    from headstart.features import extract_features

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as td:
        tmp = Path(td)
        t = time.perf_counter()
        paths, labels, names = make_jpegs(tmp / "images", args.n)
        print(f"{args.n} JPEGs ({len(names)} classes) written in {time.perf_counter() - t:.1f}s; batch {args.batch}; cores {os.cpu_count()}")
        bb = create_backbone("efficientnet_lite0")
        ds = LabeledDataset(paths, labels, names)
        cache = tmp / "cache"

        t = time.perf_counter()
        fa = plain_timm_loop(bb, paths, args.batch)
        t_plain = time.perf_counter() - t

        log, logger = _RuntimeLog(), logging.getLogger("headstart.features")
        logger.addHandler(log)
        level, logger.level = logger.level, logging.INFO
        t = time.perf_counter()
        extract_features(bb, ds.subset(range(min(8, args.n))), batch_size=args.batch, cache=False, cache_dir=cache)
        t_export = time.perf_counter() - t  # one-time: ONNX export + verification (+ loader start)
        logger.removeHandler(log)
        logger.setLevel(level)

        t = time.perf_counter()
        fb = extract_features(bb, ds, batch_size=args.batch, cache=False, cache_dir=cache)
        t_auto = time.perf_counter() - t

        extract_features(bb, ds.subset(range(min(8, args.n))), batch_size=args.batch, runtime="onnx", cache=False, cache_dir=cache)
        t = time.perf_counter()
        fo = extract_features(bb, ds, batch_size=args.batch, runtime="onnx", cache=False, cache_dir=cache)
        t_onnx = time.perf_counter() - t

        t = time.perf_counter()
        fc = extract_features(bb, ds, batch_size=args.batch, runtime="torch", cache=False, cache_dir=cache)
        t_torch = time.perf_counter() - t

        extract_features(bb, ds, batch_size=args.batch, cache_dir=cache)  # fill the cache
        t = time.perf_counter()
        fd = extract_features(bb, ds, batch_size=args.batch, cache_dir=cache)
        t_hit = time.perf_counter() - t

        agree, acc_a, acc_b = agreement(fa, fb, labels)
        peak = peak_memory(paths, args.peak_n, args.batch, tmp) if args.peak_n else None

    ips = lambda s: args.n / s  # noqa: E731
    rows = [
        ("(a) plain timm eager loop", f"{ips(t_plain):7.1f} img/s", "1.00x"),
        (f"(b) extract_features auto ({log.name_seen})", f"{ips(t_auto):7.1f} img/s", f"{t_plain / t_auto:.2f}x"),
        ("    extract_features runtime='onnx'", f"{ips(t_onnx):7.1f} img/s", f"{t_plain / t_onnx:.2f}x"),
        ("    extract_features runtime='torch'", f"{ips(t_torch):7.1f} img/s", f"{t_plain / t_torch:.2f}x"),
        ("    one-time ONNX export, verify, compile", f"{t_export:7.1f} s", ""),
        (f"    cache hit, {args.n} items (2nd call)", f"{t_hit * 1000:7.1f} ms", ""),
    ]
    print()
    for r in rows:
        print(f"{r[0]:<44}{r[1]:>16}{r[2]:>9}")
    print(f"{'max |feature diff| (a) vs (b)':<44}{np.abs(fa - fb).max():>16.2e}")
    print(f"{'max |feature diff| (a) vs onnx runtime':<44}{np.abs(fa - fo).max():>16.2e}")
    print(f"{'max |feature diff| (a) vs torch runtime':<44}{np.abs(fa - fc).max():>16.2e}")
    print(f"{'cache hit identical to computed':<44}{str(bool((fd == fb).all())):>16}")
    print(f"{'logreg prediction agreement (a) vs (b)':<44}{agree:>15.1f}%   (held-out acc {acc_a:.1f}% vs {acc_b:.1f}%)")
    if peak:
        gib = 1024**3
        print(
            f"{'peak RSS, ' + str(peak['n']) + ' images (main process)':<44}{peak['maxrss_self'] / gib:>12.2f} GiB"
            f"   (after imports+model {peak['base_rss'] / gib:.2f}; loader worker {peak['maxrss_children'] / gib:.2f};"
            f" main+worker PSS sampled {peak['sampled_peak_sum'] / gib:.2f})"
        )
        print(
            f"{'    ' + str(peak['n']) + ' images: extraction / cache hit':<44}{peak['n'] / peak['seconds']:>10.1f} img/s"
            f"   {peak['hit_seconds']:.2f} s hit (identical: {peak['same']})"
        )
    print(f"load average: {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end (other processes skew timings)")


if __name__ == "__main__":
    main()
