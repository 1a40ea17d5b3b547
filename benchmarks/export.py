"""Export benchmark: a real run exported to ONNX and OpenVINO, fp32, INT8 and pruned; sizes, speed, parity, test accuracy.

    python benchmarks/export.py                          # sklearn digits (1,797 8x8 images), EfficientNet-Lite0 linear probe
    python benchmarks/export.py --json out.json
    python benchmarks/export.py --prune-sweep 0.2,0.3,0.4 --sweep-epochs 6 --json out.json   # and other --prune amounts, fp32

The run is fit in memory (70/15/15, seed 0, input size auto); each export is calibrated and checked
on its validation split (``calibration=`` the splits, as ``--calibration`` would; the pruned model
is fine-tuned on the training split). Each export times eager torch fp32 and its own graphs on the
same 32 images with the same thread count in this process (warm-up excluded), so the ratios are
measured in the same run. Every row also gets its accuracy on the test split (``test_accuracy``),
which no export looked at (the pruned fine-tune picks its epoch on the validation split, so its
validation accuracy is optimistic). On a shared 2-core CPU the images/s are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def digits():
    import numpy as np
    from sklearn.datasets import load_digits

    from headstart.data import from_arrays
    from headstart.data.split import stratified_split

    d = load_digits()
    x = (d.images * (255 / 16)).round().astype(np.uint8)
    return stratified_split(from_arrays(x, d.target, [str(i) for i in range(10)], source="sklearn-digits"), val=0.15, test=0.15, seed=0)


def test_accuracy(run, export, splits) -> dict[str, float]:
    """Each row's accuracy on the test split: the run (eager torch) and every graph in the export folder."""
    import numpy as np
    import torch

    from headstart.export.onnx import OpenVinoSessionRunner
    from headstart.features.runtime import OnnxRunner
    from headstart.model import load

    model = load(run)
    tf = model.backbone.preprocessing.transform()
    x = torch.stack([tf(splits.test.load(i)) for i in range(len(splits.test))])
    y = np.asarray(splits.test.labels)
    with torch.inference_mode():
        out = {"torch_fp32": float((model.head(model.backbone(x)).argmax(1).numpy() == y).mean())}
    pre = json.loads((export / "preprocessing.json").read_text())
    rows = json.loads((export / "export.json").read_text())["rows"]
    for key, name in pre["models"].items():
        runner = OpenVinoSessionRunner(export / name, 2) if name.endswith(".xml") else OnnxRunner(export / name, chunk=32)
        row = next(k for k, r in rows.items() if r["file"] == name)
        out[row] = float((runner(x).argmax(1) == y).mean())
    return out


def show(title: str, report: dict) -> None:
    from headstart.evaluate.export_table import COLUMNS, table_rows

    t = report["timing"]
    print(f"\n{title}: checked on {report['checked_on']['n']} validation images, batch {t['batch_size']}, {t['threads']} threads")
    rows = [[*r, (f"{report['test_accuracy'][r[0]]:.4f}" if r[0] in report['test_accuracy'] else "-")] for r in table_rows(report)]
    cols = [*COLUMNS, "test acc"]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    for r in [cols, *rows]:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--prune", type=float, default=None, help="The pruned variant's share of channels removed (default: --prune's default).")
    ap.add_argument("--prune-epochs", type=int, default=None, help="Its fine-tuning epochs (default: --prune-epochs' default).")
    ap.add_argument("--prune-sweep", default=None, help="Also export pruned (fp32) at each of these amounts (comma-separated)...")
    ap.add_argument("--sweep-epochs", default="6", help="... with each of these fine-tuning epochs (comma-separated).")
    ap.add_argument("--json", type=Path, help="Write the results here.")
    args = ap.parse_args()

    import headstart
    from headstart.export.prune import DEFAULT_AMOUNT, DEFAULT_EPOCHS

    splits = digits()
    results: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        headstart.fit(splits, backbone=args.backbone, strategy="linear", out=run)
        amount, epochs = args.prune if args.prune is not None else DEFAULT_AMOUNT, args.prune_epochs or DEFAULT_EPOCHS
        jobs = [("onnx", dict(format="onnx", quantize="int8")), ("openvino", dict(format="openvino", quantize="int8")),
                (f"onnx_pruned{amount:g}_e{epochs}", dict(format="onnx", quantize="int8", prune=amount, prune_epochs=epochs))]
        if args.prune_sweep:  # fp32 only: the sweep compares pruning amounts and epochs
            jobs += [(f"prune{a:g}_e{e}", dict(prune=a, prune_epochs=e)) for a in map(float, args.prune_sweep.split(","))
                     for e in map(int, args.sweep_epochs.split(",")) if (a, e) != (amount, epochs)]
        for name, kw in jobs:
            t = time.perf_counter()
            # measured, not refused: the table says whether 0.99 agreement / 2 points are met
            res = headstart.export_run(run, out=Path(tmp) / name, calibration=splits, min_agreement=0.0, max_accuracy_drop=1.0, **kw)
            res.report["seconds"] = round(time.perf_counter() - t, 1)
            res.report["test_accuracy"] = test_accuracy(run, res.out, splits)
            results[name] = res.report
            show(f"{name} ({res.report['seconds']} s)", res.report)
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\ntotal {results['total_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
