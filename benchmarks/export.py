"""Export benchmark: a real run exported to ONNX fp32 and INT8 (QDQ and QOperator), sizes, speed, parity.

    python benchmarks/export.py                 # sklearn digits (1,797 8x8 images), EfficientNet-Lite0 linear probe
    python benchmarks/export.py --json out.json

The run is fit in memory (70/15/15, seed 0, input size auto); the export is calibrated and checked
on its validation split (``calibration=`` the splits, as ``--calibration`` would). Each export
times eager torch fp32, ONNX fp32 and INT8 on the same 32 images with the same thread count in
this process (warm-up excluded), so the ratios are measured in the same run. On a shared 2-core
CPU the images/s are upper bounds of the cost (lower bounds of the speed) only if nothing else
runs; read them as noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--json", type=Path, help="Write the results here.")
    args = ap.parse_args()

    import headstart
    from headstart.export.onnx import format_table

    splits = digits()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        headstart.fit(splits, backbone=args.backbone, strategy="linear", out=Path(tmp) / "run")
        for fmt in ("QDQ", "QOperator"):
            res = headstart.export_run(Path(tmp) / "run", quantize="int8", out=Path(tmp) / f"export-{fmt}", calibration=splits, quant_format=fmt,
                                       min_agreement=0.0)  # measured, not refused: the table says whether 0.99 is met
            results[fmt] = res.report
            t = res.report["timing"]
            size = json.loads((res.out / "preprocessing.json").read_text())["input"]["height"]
            print(f"\nINT8 {fmt}: checked on {res.report['checked_on']['n']} validation images at {size} px, batch {t['batch_size']}, {t['threads']} threads")
            cols = ["model", "MB", "images/s", "vs torch", "accuracy", "agreement", "max |diff|"]
            rows = format_table(res.report)
            widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
            for r in [cols, *rows]:
                print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
