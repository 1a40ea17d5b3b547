"""Feature-extraction speed: a plain timm eager loop vs ``headstart.extract_features`` (run by hand).

    python benchmarks/extract_speed.py [--n 512] [--batch 32] [--peak-n 10000] [--photos N] [--folder DIR]

On the same real JPEG files (random crops of ``skimage.data`` photos, 224-400 px, written to a temp
folder; the class of an image is the photo it was cut from) it measures:

(a) a plain loop: timm ``tf_efficientnet_lite0`` with headstart's EfficientNet-Lite0 weights, PIL
    decode + the same transform in the main process, ``forward_features`` + pooling, eval, no_grad;
(b) ``extract_features(..., cache=False)`` with ``runtime="auto"`` (OpenVINO fp32 when installed;
    after one warm-up call that exports the ONNX graph and verifies it, timed separately), and with
    ``runtime="onnx"`` (ONNX Runtime) and ``runtime="torch"`` for reference;

then prints images/s, the speed ratio, the largest absolute feature difference, whether logistic
regressions trained on each feature set agree on held-out items, the cache-hit time of a second
call, and the peak resident memory of extracting ``--peak-n`` images in a subprocess.

With native bf16 it also times ``extract_features`` at the precision the bf16 check chose
(``headstart.features.precision.check`` on these images: all-bf16 or fp32 up to a cut of the graph
and bf16 after, where that agrees with fp32; else fp32).

The pipeline section (issue 16) then measures, per photo set (generated 500x375 and 4000x3000
JPEGs of ``--photos`` images each, or the images of ``--folder``): the bf16 check (probe agreement
and feature cosine of each candidate against fp32, and which it chose), each stage's cost on one
core (decode + resize + normalise, with and without JPEG draft mode; OpenVINO inference at each
precision, one thread), the bound ``cores / (decode_ms + infer_ms)``, and the achieved end-to-end
rate of the previous pipeline (one DataLoader worker process, full decode) and of
``extract_features`` at fp32, all-bf16 and the chosen precision, as a share of the bound.
Other processes on the machine skew timings: the load average is printed with the results.
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


def _skimage_photos(names: list[str]) -> list:
    """The named ``skimage.data`` photos as RGB PIL images."""
    from PIL import Image
    from skimage import data

    out = []
    for name in names:
        img = getattr(data, name)()
        img = img[0] if isinstance(img, tuple) else img
        out.append(Image.fromarray(np.asarray(img)).convert("RGB"))
    return out


def make_jpegs(folder: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """``n`` JPEG files cut from skimage photos at random; returns paths, labels, class names."""
    from PIL import Image

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera"]
    photos = _skimage_photos(names)
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


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` camera-like JPEGs of ``size`` (w, h): crops of skimage photos upscaled, with sensor-like
    noise (so the file carries fine detail, as a photo does), quality 92; labels: the source photo."""
    from PIL import Image

    sources = _skimage_photos(["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina"])
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], rng.integers(0, len(sources), n)
    for i, c in enumerate(labels):
        im = sources[c]
        w, h = im.size
        x0, y0 = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        crop = im.crop((x0, y0, x0 + 3 * w // 4, y0 + 3 * h // 4)).resize(size, Image.BICUBIC)
        noisy = np.asarray(crop, dtype=np.float32) + rng.normal(0, 4, (size[1], size[0], 3)).astype(np.float32)
        paths.append(str(folder / f"photo{i:04d}.jpg"))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(paths[-1], quality=92)
    return paths, labels


def folder_images(folder: Path) -> tuple[list[str], np.ndarray]:
    """The images under ``folder``; labels from their parent folder's name."""
    from headstart.data.images import IMAGE_EXTENSIONS

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"no images under {folder}")
    parents = sorted({p.parent.name for p in files})
    return [str(p) for p in files], np.array([parents.index(p.parent.name) for p in files])


class FullDecode:
    """A backbone's transform without its ``decode_size``: loaders decode every image in full."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image)


def stage_costs(bb, ds, onnx_path, batch: int, n: int = 64, precisions: tuple[str, ...] = ("f32", "bf16")) -> dict:
    """Per-image core-milliseconds of each stage, measured one stage at a time on one core
    (a mixed precision ``bf16@<node>``: its fp32 and bf16 parts one after the other)."""
    import torch

    from headstart._util import ov_cpu_model
    from headstart.data.dataset import TorchDataset
    from headstart.features.split import cut_of, split_model

    tf = bb.preprocessing.transform()
    full = TorchDataset(ds, FullDecode(tf))
    drafted = TorchDataset(ds, tf)
    k = min(n, len(ds))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, tds in (("decode_full_ms", full), ("decode_ms", drafted)):
            tds[0]
            t = time.perf_counter()
            x = torch.stack([tds[i][0] for i in range(k)])
            out[name] = (time.perf_counter() - t) / k * 1e3
    finally:
        torch.set_num_threads(threads)
    xn = np.ascontiguousarray(x.numpy())
    for precision in precisions:
        cut = cut_of(precision)
        parts = [(onnx_path, precision)] if cut is None else list(zip(split_model(onnx_path, cut), ("f32", "bf16")))
        requests = [ov_cpu_model(model, threads=1, precision=p).create_infer_request() for model, p in parts]

        def run():
            for i in range(0, len(xn), 4):
                y = xn[i : i + 4]
                for r in requests:
                    y = r.infer({0: y})[0]

        run()
        t = time.perf_counter()
        run()
        out[f"infer_{precision}_ms"] = (time.perf_counter() - t) / len(xn) * 1e3
    return out


def previous_pipeline(paths: list[str], batch: int, cache: Path) -> float:
    """Images/s of headstart's extraction before issue 16: one DataLoader worker process decoding in
    full, batch after batch into OpenVINO fp32 (LATENCY), no overlap beyond the worker's prefetch.
    Run in a fresh process (the worker must start before any OpenVINO thread exists, as it did)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_previous_rate, paths, batch, str(cache)).result()


def _previous_rate(paths: list[str], batch: int, cache: str) -> float:
    import torch
    from torch.utils.data import DataLoader

    from headstart.backbones.registry import create_backbone
    from headstart.data.dataset import LabeledDataset, TorchDataset
    from headstart.features.cache import backbone_fingerprint
    from headstart.features.runtime import make_runner

    bb = create_backbone("efficientnet_lite0").eval()
    ds = LabeledDataset(paths, [0] * len(paths), ["x"])
    loader = DataLoader(TorchDataset(ds, FullDecode(bb.preprocessing.transform())), batch_size=batch, num_workers=1)
    runner, t = None, time.perf_counter()
    batches = iter(loader)  # the worker starts before any runtime thread exists
    for i, (x, _) in enumerate(batches):
        if runner is None:
            runner = make_runner("auto", bb, x, fingerprint=backbone_fingerprint(bb), cache_dir=Path(cache))
            runner(x)  # compile and warm up: not timed, as the other rows' one-time work is not
            t = time.perf_counter()
            continue
        runner(x)
    return (len(ds) - min(batch, len(ds))) / (time.perf_counter() - t)


def pipeline_rows(bb, sets: dict, batch: int, cache: Path) -> list[dict]:
    """The pipeline section's measurements: per photo set, the bf16 check's choice, then one row
    per precision (fp32; all-bf16 and the chosen one where the CPU has native bf16)."""
    import torch

    from headstart.data.dataset import LabeledDataset
    from headstart.features import extract_features
    from headstart.features.cache import backbone_fingerprint
    from headstart.features.precision import bf16_supported, check
    from headstart.features.runtime import onnx_model

    cores = os.cpu_count() or 1
    # Without native bf16 (e.g. AVX2-only CPUs) OpenVINO runs a bf16 request in fp32: no bf16 rows, only the check's verdict.
    native = bf16_supported()
    rows = []
    for name, (paths, labels) in sets.items():
        ds = LabeledDataset(paths, labels, [str(c) for c in range(int(labels.max()) + 1)])
        extract_features(bb, ds.subset(range(4)), batch_size=batch, cache=False, cache_dir=cache)  # export, verify, compile
        verdict = {}
        if len(set(labels.tolist())) > 1:
            t = time.perf_counter()
            verdict = check(bb, ds, batch_size=batch, cache_dir=cache, sample=min(512, len(ds)))
            verdict["check_s"] = time.perf_counter() - t
            print(f"{name}: bf16 check in {verdict['check_s']:.1f}s -> {verdict['precision']}: {verdict['reason']}", flush=True)
        precisions = list(dict.fromkeys(["f32", *(["bf16", verdict.get("precision", "bf16")] if native else [])]))
        sample = torch.stack([bb.preprocessing.transform()(ds.load(0))] * 2)
        costs = stage_costs(bb, ds, onnx_model(bb, sample, fingerprint=backbone_fingerprint(bb), cache_dir=cache), batch, precisions=tuple(precisions))
        previous = previous_pipeline(paths, batch, cache)
        for precision in precisions:
            extract_features(bb, ds.subset(range(4)), batch_size=batch, cache=False, cache_dir=cache, precision=precision)  # compiled
            t = time.perf_counter()
            extract_features(bb, ds, batch_size=batch, cache=False, cache_dir=cache, precision=precision)
            rate = len(ds) / (time.perf_counter() - t)
            bound = cores * 1e3 / (costs["decode_ms"] + costs[f"infer_{precision}_ms"])
            row = {"set": name, "n": len(ds), "cores": cores, "bf16_native": native, "precision": precision,
                   "chosen": precision == verdict.get("precision"), "decode_ms": costs["decode_ms"], "decode_full_ms": costs["decode_full_ms"],
                   "infer_ms": costs[f"infer_{precision}_ms"], "previous_img_s": previous, "img_s": rate, "bound_img_s": bound,
                   "of_bound": rate / bound, "vs_previous": rate / previous}
            if precision == verdict.get("precision") or (precision == "bf16" and "tried" in verdict):
                tried = {t["precision"]: t for t in verdict.get("tried", [])}
                row.update({k: tried.get(precision, verdict).get(k) for k in ("agreement", "cosine_mean", "cosine_min")})
            if row["chosen"]:
                row.update(reason=verdict["reason"], check_s=verdict["check_s"])
            rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def print_pipeline(rows: list[dict]) -> None:
    from headstart.features.split import describe

    print("\npipeline (per image: decode = decode+resize+normalise on one core; infer = OpenVINO on one core;"
          " bound = cores / (decode + infer); * = chosen by the bf16 check)")
    print(f"{'set':<16}{'precision':<34}{'decode ms':>10}{'(full)':>8}{'infer ms':>9}{'bound':>8}{'img/s':>8}{'of bound':>9}"
          f"{'previous':>9}{'x prev':>7}{'cosine':>9}")
    for r in rows:
        mark = "*" if r["chosen"] else " "
        cos = f"{r['cosine_mean']:.5f}" if r.get("cosine_mean") is not None else ""
        print(f"{r['set']:<16}{mark + describe(r['precision']):<34.34}{r['decode_ms']:>10.2f}{r['decode_full_ms']:>8.1f}{r['infer_ms']:>9.2f}"
              f"{r['bound_img_s']:>8.1f}{r['img_s']:>8.1f}{r['of_bound']:>9.2f}{r['previous_img_s']:>9.1f}{r['vs_previous']:>7.2f}{cos:>9}")
    if rows and not rows[0]["bf16_native"]:
        print("this CPU has no native bf16: only fp32 is measured")


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
    ap.add_argument("--photos", type=int, default=128, help="images per generated photo set of the pipeline section (0: skip it)")
    ap.add_argument("--folder", type=Path, default=None, help="measure the pipeline on the images of this folder instead")
    ap.add_argument("--pipeline-only", action="store_true", help="skip the runtime comparison and the peak-memory run")
    ap.add_argument("--json", default=None, help="also write the pipeline rows here")
    args = ap.parse_args()

    from headstart.backbones.registry import create_backbone
    from headstart.data.dataset import LabeledDataset
    from headstart.features import extract_features
    from headstart.features.precision import bf16_supported, check
    from headstart.features.split import describe

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as td:
        tmp = Path(td)
        if args.pipeline_only:
            bb = create_backbone("efficientnet_lite0")
            _pipeline(bb, args, tmp)
            return
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

        chosen, t_chosen = "f32", None
        if bf16_supported():
            chosen = check(bb, ds, batch_size=args.batch, cache_dir=cache)["precision"]
            extract_features(bb, ds.subset(range(min(8, args.n))), batch_size=args.batch, cache=False, cache_dir=cache, precision=chosen)
            t = time.perf_counter()
            extract_features(bb, ds, batch_size=args.batch, cache=False, cache_dir=cache, precision=chosen)
            t_chosen = time.perf_counter() - t

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
        _pipeline(bb, args, tmp)

    ips = lambda s: args.n / s  # noqa: E731
    rows = [
        ("(a) plain timm eager loop", f"{ips(t_plain):7.1f} img/s", "1.00x"),
        (f"(b) extract_features auto ({log.name_seen})", f"{ips(t_auto):7.1f} img/s", f"{t_plain / t_auto:.2f}x"),
        *([(f"    checked precision: {describe(chosen)}"[:44], f"{ips(t_chosen):7.1f} img/s", f"{t_plain / t_chosen:.2f}x")] if t_chosen else []),
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


def _pipeline(bb, args, tmp: Path) -> None:
    if args.folder is not None:
        sets = {args.folder.name: folder_images(args.folder)}
    elif args.photos:
        t = time.perf_counter()
        sets = {f"{w}x{h} JPEG": make_photos(tmp / f"photos{w}", args.photos, (w, h)) for w, h in ((500, 375), (4000, 3000))}
        print(f"photo sets written in {time.perf_counter() - t:.1f}s")
    else:
        return
    load0 = os.getloadavg()[0]
    rows = pipeline_rows(bb, sets, args.batch, tmp / "cache")
    print_pipeline(rows)
    print(f"load average: {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end (other processes skew timings)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
