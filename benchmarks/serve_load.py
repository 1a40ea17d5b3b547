"""Load test of ``headstart serve`` on 127.0.0.1: throughput and p50/p99 latency at 1, 8 and 32 clients, and bad uploads.

    python benchmarks/serve_load.py                          # fits a digits Lite0 probe, exports INT8, serves the export
    python benchmarks/serve_load.py --path exports/NAME      # or serve a given run/export folder
    python benchmarks/serve_load.py --requests 400 --json out.json

Bounded: a fixed number of requests per level (``--requests``), then the server (a subprocess of this
script, bound to 127.0.0.1 only) is stopped. Each request uploads one image (a digit from sklearn's
validation split, as a 64 px PNG) as multipart field ``file``. Errors are counted (must be 0 for
valid requests). The mixed phase sends, at 8 clients, valid uploads interleaved with bad ones
(text as an image, a truncated PNG, an empty file, a wrong field name, an image over the pixel
limit, JSON to an image service): every bad one must get a 4xx, no valid one may fail.
On a shared 2-core CPU, client and server compete for the same cores: read the numbers as upper
bounds of the latency and lower bounds of the throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def digit_pngs(n: int = 64) -> list[bytes]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[-n:] * (255 / 16)).round().astype(np.uint8)
    out = []
    for im in x:
        buf = io.BytesIO()
        Image.fromarray(im).resize((64, 64), Image.Resampling.NEAREST).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def bad_uploads(good: bytes) -> dict[str, dict]:
    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (9000, 9000)).save(big, format="PNG")  # 81 Mpx, over the 40 Mpx default limit, ~80 kB
    return {
        "text as image": dict(files={"file": ("a.png", b"this is not an image", "image/png")}),
        "truncated": dict(files={"file": ("a.png", good[: len(good) // 2], "image/png")}),
        "empty": dict(files={"file": ("a.png", b"", "image/png")}),
        "wrong field": dict(files={"image": ("a.png", good, "image/png")}),
        "huge image": dict(files={"file": ("big.png", big.getvalue(), "image/png")}),
        "json": dict(json={"text": "hello"}),
    }


def build_export(tmp: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from export import digits  # benchmarks/export.py's split of sklearn digits

    import headstart

    splits = digits()
    headstart.fit(splits, backbone="efficientnet_lite0", strategy="linear", out=tmp / "run")
    return headstart.export_run(tmp / "run", quantize="int8", out=tmp / "export", calibration=splits).out


async def level(url: str, images: list[bytes], clients: int, requests: int) -> dict:
    import httpx
    import numpy as np

    lat: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def worker(client):
        nonlocal errors
        for i in counter:
            t0 = time.perf_counter()
            r = await client.post(url + "/predict", files={"file": ("d.png", images[i % len(images)], "image/png")})
            lat.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"clients": clients, "requests": requests, "errors": errors, "requests_per_s": requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


async def mixed(url: str, images: list[bytes], rounds: int) -> dict:
    import httpx

    bad = bad_uploads(images[0])
    jobs = [("valid", dict(files={"file": ("d.png", images[i % len(images)], "image/png")})) for i in range(rounds * len(bad))]
    jobs += [(name, kw) for _ in range(rounds) for name, kw in bad.items()]
    jobs.sort(key=lambda j: hash(j[0]) % 7)  # interleaved, deterministic for a given interpreter
    out = {"valid": 0, "valid_failed": 0, "bad": 0, "bad_with_4xx": 0, "bad_other": []}
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=120) as client:
        async def one(name, kw):
            async with sem:
                r = await client.post(url + "/predict", **kw)
            if name == "valid":
                out["valid"] += 1
                out["valid_failed"] += r.status_code != 200
            else:
                out["bad"] += 1
                if 400 <= r.status_code < 500 and "error" in r.json():
                    out["bad_with_4xx"] += 1
                else:
                    out["bad_other"].append((name, r.status_code))
        await asyncio.gather(*(one(n, kw) for n, kw in jobs))
        out["health_after"] = (await client.get(url + "/health")).json()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path, help="A run or export folder to serve (default: build a digits INT8 export).")
    ap.add_argument("--requests", type=int, default=200, help="Requests per concurrency level.")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        path = args.path or build_export(Path(tmp))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "headstart.cli", "serve", str(path), "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(600):
                try:
                    httpx.get(url + "/health", timeout=1)
                    break
                except httpx.HTTPError:
                    if server.poll() is not None:
                        raise SystemExit(f"the server exited: {server.stderr.read().decode()[-2000:]}")
                    time.sleep(0.1)
            meta = httpx.get(url + "/metadata").json()
            images = digit_pngs()
            asyncio.run(level(url, images, 1, 10))  # warm-up
            rows = [asyncio.run(level(url, images, int(c), args.requests)) for c in args.clients.split(",")]
            mix = asyncio.run(mixed(url, images, rounds=5))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"serving {meta['source']} ({meta.get('precision')}, {meta.get('backbone')}, {meta.get('image_size')} px), {os.cpu_count()} CPUs")
    print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
    print(f"mixed: {mix['valid']} valid ({mix['valid_failed']} failed), {mix['bad']} bad ({mix['bad_with_4xx']} got a JSON 4xx; "
          f"other: {mix['bad_other']}); server health after: {mix['health_after']}")
    if args.json:
        args.json.write_text(json.dumps({"metadata": meta, "levels": rows, "mixed": mix}, indent=2) + "\n")
    if any(r["errors"] for r in rows) or mix["valid_failed"] or mix["bad_other"]:
        raise SystemExit("FAILED: some valid requests failed or some bad ones did not get a 4xx")


if __name__ == "__main__":
    main()
