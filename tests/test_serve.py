"""``headstart serve``: endpoints with valid and invalid inputs (in-process test client), dynamic batching,
no training code on the request path, and the HTML page in headless Chromium."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import headstart
from headstart.data import Splits, from_arrays
from headstart.errors import HeadstartError

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from headstart.export.serve import create_app  # noqa: E402

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def colours(n, seed, noise=40):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.clip(np.array(c)[None, None, None] + rng.normal(0, noise, (n, 16, 16, 3)), 0, 255) for c in COLOURS.values()])
    return x.astype(np.uint8), np.repeat(np.arange(3), n)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    parts = [from_arrays(*colours(n, seed=i), list(COLOURS), source=f"colours:{i}") for i, n in enumerate((20, 10, 10))]
    out = tmp_path_factory.mktemp("serve") / "run"
    headstart.fit(Splits(*parts), backbone="tiny_cnn", strategy="finetune", unfreeze="all", epochs=3, lr=3e-3, out=out)
    return out


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_app(run, max_request_bytes=200_000, max_pixels=1_000_000, max_wait_ms=20)) as c:
        yield c


def png(colour=(220, 40, 40), size=(16, 16), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def test_health_metadata_and_page(client):
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["classes"] == list(COLOURS) and meta["modality"] == "image" and meta["backbone"] == "tiny_cnn"
    assert meta["image_size"] and meta["headstart_version"] == headstart.__version__ and meta["source"] == "run"
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "red, green, blue" in page.text


def test_predict_one_and_a_batch_match_the_model(client, run):
    files = [("file", (f"{name}.png", png(c), "image/png")) for name, c in COLOURS.items()]
    res = client.post("/predict?top_k=3", files=files)
    assert res.status_code == 200, res.text
    preds = res.json()["predictions"]
    assert [p["input"] for p in preds] == ["red.png", "green.png", "blue.png"]
    assert all(len(p["top"]) == 3 and p["top"][0]["class"] == p["prediction"] for p in preds)
    images = [np.asarray(Image.open(io.BytesIO(png(c)))) for c in COLOURS.values()]
    expected = headstart.load(run).predict_proba(np.stack(images))
    got = np.array([[{t["class"]: t["probability"] for t in p["top"]}[c] for c in COLOURS] for p in preds])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    one = client.post("/predict?top_k=2", files={"file": ("x.jpg", png(fmt="JPEG"), "image/jpeg")})
    assert one.status_code == 200 and len(one.json()["predictions"][0]["top"]) == 2


@pytest.mark.parametrize("case, status, says", [
    ("not an image", 422, "not an image file"),
    ("truncated", 422, "truncated"),
    ("empty", 422, "empty"),
    ("huge image", 413, "over the limit"),
    ("too many bytes", 413, "over the limit"),
    ("wrong field", 422, "no 'file' field"),
    ("text field", 422, "not an uploaded file"),
    ("json to an image run", 415, "classifies images"),
    ("no body type", 415, "unsupported content type"),
    ("bad top_k", 422, "top_k"),
])
def test_bad_inputs_get_a_4xx_that_says_why(client, case, status, says):
    good = png()
    big = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(big, format="PNG")  # 1.2 Mpx over the 1 Mpx limit, a few kB
    kwargs = {
        "not an image": dict(files={"file": ("a.png", b"hello, this is text", "image/png")}),
        "truncated": dict(files={"file": ("a.png", good[: len(good) // 2], "image/png")}),
        "empty": dict(files={"file": ("a.png", b"", "image/png")}),
        "huge image": dict(files={"file": ("big.png", big.getvalue(), "image/png")}),
        "too many bytes": dict(files={"file": ("a.bmp", b"\0" * 300_000, "image/bmp")}),
        "wrong field": dict(files={"image": ("a.png", good, "image/png")}),
        "text field": dict(data={"file": "a.png"}, files={"other": ("a.png", good, "image/png")}),
        "json to an image run": dict(json={"text": "hello"}),
        "no body type": dict(content=good),
        "bad top_k": dict(params={"top_k": "zero"}, files={"file": ("a.png", good, "image/png")}),
    }[case]
    res = client.post("/predict", **kwargs)
    assert res.status_code == status, (case, res.status_code, res.text)
    assert says in res.json()["error"], res.json()
    assert client.post("/predict", files={"file": ("a.png", good, "image/png")}).status_code == 200  # still serving


def test_concurrent_requests_are_batched(client):
    before = client.get("/health").json()["batches"]
    codes = []

    def one():
        codes.append(client.post("/predict", files={"file": ("a.png", png(), "image/png")}).status_code)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 12
    assert client.get("/health").json()["batches"] - before < 12  # some requests shared a forward pass


def test_an_export_folder_serves_the_same_answers_without_torch(run, client, tmp_path):
    from headstart.export import export_run

    val = from_arrays(*colours(10, seed=1), list(COLOURS), source="colours:1")
    export_run(run, out=tmp_path / "exp", calibration=val)
    files = [("file", (f"{name}.png", png(c), "image/png")) for name, c in COLOURS.items()]
    with TestClient(create_app(tmp_path / "exp")) as exp:
        assert exp.get("/metadata").json()["source"] == "export"
        got = exp.post("/predict", files=files).json()["predictions"]
    want = client.post("/predict", files=files).json()["predictions"]
    assert [g["prediction"] for g in got] == [w["prediction"] for w in want]
    np.testing.assert_allclose([g["probability"] for g in got], [w["probability"] for w in want], atol=1e-3)
    code = (
        "import sys, io\nfrom PIL import Image\nfrom fastapi.testclient import TestClient\n"
        "from headstart.export.serve import create_app\n"
        f"c = TestClient(create_app({str(tmp_path / 'exp')!r}))\nb = io.BytesIO(); Image.new('RGB', (16, 16)).save(b, format='PNG')\n"
        "assert c.post('/predict', files={'file': ('a.png', b.getvalue(), 'image/png')}).status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning') or m.startswith('headstart.train')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout  # an export is served with onnxruntime, numpy and Pillow only


def test_bad_folder_and_settings_are_refused(tmp_path, run):
    with pytest.raises(HeadstartError, match="does not exist"):
        create_app(tmp_path / "nope")
    with pytest.raises(HeadstartError, match="neither a run folder"):
        create_app(tmp_path)
    with pytest.raises(HeadstartError, match="'max_batch' parameter must be a positive integer"):
        create_app(run, max_batch=0)


def test_request_path_imports_no_training_code(run):
    code = (
        "import sys, io\nfrom PIL import Image\nfrom fastapi.testclient import TestClient\n"
        "from headstart.export.serve import create_app\n"
        f"c = TestClient(create_app({str(run)!r}))\nb = io.BytesIO(); Image.new('RGB', (16, 16)).save(b, format='PNG')\n"
        "assert c.post('/predict', files={'file': ('a.png', b.getvalue(), 'image/png')}).status_code == 200\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('headstart.train', 'headstart.fitting', 'lightning', 'pytorch_lightning')))\n"
        "print(bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# Same-origin harness (added to the app by the test only): it loads the real page at / in an iframe, draws a
# red 20x20 PNG on a canvas, puts it in the page's file input (DataTransfer, as a user's file choice does),
# clicks the page's Predict button and copies what the page's own script shows into its DOM.
HARNESS = """<!doctype html><html><body><iframe id="page" src="/"></iframe><pre id="result">pending</pre><script>
const frame = document.getElementById("page");
frame.onload = async () => {
  const d = frame.contentDocument, out = document.getElementById("result");
  const c = document.createElement("canvas"); c.width = c.height = 20;
  const g = c.getContext("2d"); g.fillStyle = "rgb(220,40,40)"; g.fillRect(0, 0, 20, 20);
  const blob = await new Promise((r) => c.toBlob(r, "image/png"));
  const dt = new DataTransfer(); dt.items.add(new File([blob], "red.png", {type: "image/png"}));
  d.getElementById("file").files = dt.files;
  d.getElementById("send").click();
  for (let i = 0; i < 200; i++) {
    const answer = d.getElementById("answer").textContent;
    if (answer !== "(no image yet)") { out.textContent = "ANSWER[" + answer + "]RAW[" + d.getElementById("raw").textContent + "]"; return; }
    await new Promise((r) => setTimeout(r, 50));
  }
  out.textContent = "TIMEOUT";
};
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium chromium-driver; 'make test' does it when it can)")
def test_page_uploads_an_image_in_headless_chromium(run, tmp_path):
    """The page, served by uvicorn on 127.0.0.1, in headless Chromium: its form posts the chosen image as multipart
    'file' to /predict and its script shows the answer (the page's own JS, against the live server)."""
    import html
    import re
    import socket
    import time

    import httpx
    import uvicorn
    from fastapi.responses import HTMLResponse

    app = create_app(run)
    seen: list[str] = []

    @app.middleware("http")
    async def record(request, call_next):  # what reached the server: method, path and content type
        seen.append(f"{request.method} {request.url.path} {request.headers.get('content-type', '').split(';')[0]}")
        return await call_next(request)

    app.add_api_route("/harness", lambda: HTMLResponse(HARNESS), methods=["GET"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run([*flags, "--dump-dom", f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert 'id="file"' in dom.stdout and "red, green, blue" in dom.stdout
        # virtual time: the harness's timers run fast, and time stands still while the upload is in flight
        dom = subprocess.run([*flags, "--virtual-time-budget=20000", "--dump-dom", f"http://127.0.0.1:{port}/harness"],
                             capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        found = re.search(r"ANSWER\[(.*?)\]RAW\[(.*?)\]</pre>", dom.stdout, re.S)
        assert found, dom.stdout[-2000:]
        answer, raw = found.group(1), json.loads(html.unescape(found.group(2)))
        assert re.fullmatch(r"red \(\d+\.\d%\)", answer), answer  # the page's text: top class and its probability
        p = raw["predictions"][0]
        assert p["prediction"] == "red" and p["input"] == "red.png" and len(p["top"]) == 3  # the file the page posted
        assert "POST /predict multipart/form-data" in seen, seen
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_text_run_takes_json(tmp_path):
    """glove50 (mean-pooled word vectors, offline): JSON texts in, top-k out; wrong keys and uploads refused."""
    import csv

    with open(tmp_path / "r.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(15):
            w.writerow([f"good great lovely nice film {i}", "pos"])
            w.writerow([f"bad awful terrible boring film {i}", "neg"])
    headstart.fit(tmp_path / "r.csv", backbone="glove50", out=tmp_path / "run")
    with TestClient(create_app(tmp_path / "run")) as c:
        assert c.get("/metadata").json()["modality"] == "text"
        res = c.post("/predict", json={"text": ["a great lovely film", "awful boring"]})
        assert res.status_code == 200, res.text
        assert [p["prediction"] for p in res.json()["predictions"]] == ["pos", "neg"]
        assert c.post("/predict", json={"text": "great"}).json()["predictions"][0]["input"] == "great"
        for body, says in (({"txt": "x"}, "expected {\"text\""), ({"text": ""}, "non-empty"), ({"text": [1]}, "non-empty")):
            bad = c.post("/predict", json=body)
            assert bad.status_code == 422 and says in bad.json()["error"], bad.text
        bad = c.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422 and "not valid UTF-8 JSON" in bad.json()["error"]
        up = c.post("/predict", files={"file": ("a.png", png(), "image/png")})
        assert up.status_code == 415 and "classifies texts" in up.json()["error"]
