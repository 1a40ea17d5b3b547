"""BreastMNIST: what raises AUC and accuracy together, measured on the validation split only.

    python benchmarks/breast_search.py NAME '{"image_size": 112, "epochs": 8}'   # one fine-tuning run, its per-epoch probabilities
    python benchmarks/breast_search.py --analyse                                 # every run so far: the post-hoc choices on val, test reported

One fine-tuning run per call (``headstart.fit``, strategy ``finetune``, Lite0 and the recipe's
defaults unless the JSON overrides them; malignant is the positive class as in ``medical.py``).
While it trains, a callback records, after every epoch (and for the probe it starts from, epoch -1),
the softmax probabilities on the validation and test splits of each image and of its horizontal
mirror; at the end it also scores the weights averaged over the last 2, 3 and 4 epochs (BatchNorm
statistics are frozen in the recipe, so averaged weights need no BN update). Everything goes to
``/tmp/breast_search/NAME.npz`` (not in the repository).

``--analyse`` compares, per run, choices a user could make from validation alone: the weights the
loop kept, the last epoch, the mean of the last k epochs' probabilities, weight averages, flip TTA,
probe + fine-tuned probability averages; each is shown with validation AUC / accuracy (argmax) /
log-loss and the same on test. Nothing is chosen on test: the test columns are only reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path("/tmp/breast_search")


def _probs(module, x):
    import torch

    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            return torch.cat([torch.softmax(module(x[i:i + 64]), 1) for i in range(0, len(x), 64)]).numpy()
    finally:
        for m, t in modes.items():
            m.training = t


def run(name: str, overrides: dict) -> None:
    import numpy as np
    import torch

    import headstart
    from headstart.data import TorchDataset
    from headstart.train import loop
    from medical import breastmnist

    splits = breastmnist()
    rec: dict = {"epochs": [], "val": [], "val_flip": [], "test": [], "test_flip": [], "states": []}
    tensors: dict = {}

    def inputs(module):
        if not tensors:
            tf = module.backbone.preprocessing.transform()
            for s in ("val", "test"):
                x = torch.stack([TorchDataset(getattr(splits, s), tf)[i][0] for i in range(len(getattr(splits, s)))])
                tensors[s], tensors[s + "_flip"] = x, torch.flip(x, dims=[3])
        return tensors

    def record(module, epoch):
        t = inputs(module)
        rec["epochs"].append(epoch)
        for k in ("val", "val_flip", "test", "test_flip"):
            rec[k].append(_probs(module, t[k])[:, 1])
        rec["states"].append({k: v.detach().clone() for k, v in module.state_dict().items()})

    orig_start, orig_end = loop.BestWeights.on_train_start, loop.BestWeights.on_train_epoch_end

    def on_start(self, trainer, pl_module):
        orig_start(self, trainer, pl_module)
        record(pl_module, -1)
        rec["module"] = pl_module

    def on_end(self, trainer, pl_module):
        orig_end(self, trainer, pl_module)
        record(pl_module, int(trainer.current_epoch))
        rec["history"], rec["kept_epoch"] = self.history, self.best_epoch

    loop.BestWeights.on_train_start, loop.BestWeights.on_train_epoch_end = on_start, on_end
    kw = dict(backbone="efficientnet_lite0", strategy="finetune", image_size=112, augment="light", epochs=8, seed=0)
    kw.update(overrides)
    t0 = time.perf_counter()
    m = headstart.fit(splits, save=False, **kw)
    seconds = time.perf_counter() - t0
    module = rec.pop("module")
    history, kept_epoch = rec.pop("history", []), rec.pop("kept_epoch", None)
    kept_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    states = rec.pop("states")
    avg = {}
    for k in (2, 3, 4):
        if len(states) - 1 >= k:  # fine-tuned epochs only (states[0] is the probe)
            sd = {n: (torch.stack([s[n].float() for s in states[-k:]]).mean(0).to(states[-1][n].dtype)) for n in states[-1]}
            module.load_state_dict(sd)
            t = inputs(module)
            avg[k] = {s: _probs(module, t[s])[:, 1] for s in ("val", "val_flip", "test", "test_flip")}
    for a in (0.3, 0.5, 0.7):  # WiSE-FT (Wortsman et al. 2022): (1 - a) * probe weights + a * last epoch's
        sd = {n: ((1 - a) * states[0][n].float() + a * states[-1][n].float()).to(states[-1][n].dtype) for n in states[-1]}
        module.load_state_dict(sd)
        t = inputs(module)
        avg[f"wise{a}"] = {s: _probs(module, t[s])[:, 1] for s in ("val", "val_flip", "test", "test_flip")}
    module.load_state_dict(kept_state)
    OUT.mkdir(exist_ok=True)
    training = m.metrics.get("training") or {}
    meta = {"name": name, "options": kw, "seconds": round(seconds, 1), "kept_epoch": kept_epoch,
            "history": [{k: r[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")} for r in history],
            "test_accuracy": m.metrics["test"]["accuracy"], "test_auc": m.metrics["test"]["roc_auc"]}
    arrays = {k: np.asarray(v) for k, v in rec.items()}
    for k, d in avg.items():
        for s, p in d.items():
            arrays[f"{k if str(k).startswith('wise') else 'swa' + str(k)}_{s}"] = p
    arrays["y_val"], arrays["y_test"] = splits.val.labels, splits.test.labels
    np.savez(OUT / f"{name}.npz", **arrays)
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1, default=str))
    print(json.dumps(meta, default=str))


def _scores(y, p):
    import numpy as np
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(p, 1e-6, 1 - 1e-6)
    return roc_auc_score(y, p), float(((p >= 0.5) == y).mean()), log_loss(y, p)


def analyse() -> list[dict]:
    import numpy as np

    rows = []
    for f in sorted(OUT.glob("*.npz")):
        d = np.load(f)
        yv, yt = d["y_val"], d["y_test"]
        ep = list(d["epochs"])
        cands: dict[str, tuple] = {}
        probe = (d["val"][0], d["test"][0])
        probe_f = ((d["val"][0] + d["val_flip"][0]) / 2, (d["test"][0] + d["test_flip"][0]) / 2)
        cands["probe"] = probe
        cands["probe+flip"] = probe_f
        last = len(ep) - 1
        cands["last"] = (d["val"][last], d["test"][last])
        cands["last+flip"] = ((d["val"][last] + d["val_flip"][last]) / 2, (d["test"][last] + d["test_flip"][last]) / 2)
        for k in (2, 3, 4):
            if last >= k:
                sl = slice(last - k + 1, last + 1)
                cands[f"mean last {k}"] = (d["val"][sl].mean(0), d["test"][sl].mean(0))
                cands[f"mean last {k}+flip"] = ((d["val"][sl].mean(0) + d["val_flip"][sl].mean(0)) / 2, (d["test"][sl].mean(0) + d["test_flip"][sl].mean(0)) / 2)
            if f"swa{k}_val" in d:
                cands[f"swa {k}"] = (d[f"swa{k}_val"], d[f"swa{k}_test"])
                cands[f"swa {k}+flip"] = ((d[f"swa{k}_val"] + d[f"swa{k}_val_flip"]) / 2, (d[f"swa{k}_test"] + d[f"swa{k}_test_flip"]) / 2)
        for a in (0.3, 0.5, 0.7):
            if f"wise{a}_val" in d:
                cands[f"wise {a}"] = (d[f"wise{a}_val"], d[f"wise{a}_test"])
                cands[f"wise {a}+flip"] = ((d[f"wise{a}_val"] + d[f"wise{a}_val_flip"]) / 2, (d[f"wise{a}_test"] + d[f"wise{a}_test_flip"]) / 2)
        la = cands["last"]
        cands["(last + probe)/2"] = ((la[0] + probe[0]) / 2, (la[1] + probe[1]) / 2)
        lf = cands["last+flip"]
        cands["(last+flip + probe+flip)/2"] = ((lf[0] + probe_f[0]) / 2, (lf[1] + probe_f[1]) / 2)
        for i, e in enumerate(ep):
            if e >= 0:
                cands[f"epoch {e}"] = (d["val"][i], d["test"][i])
                cands[f"epoch {e}+flip"] = ((d["val"][i] + d["val_flip"][i]) / 2, (d["test"][i] + d["test_flip"][i]) / 2)
        for c, (pv, pt) in cands.items():
            v, t = _scores(yv, pv), _scores(yt, pt)
            rows.append({"run": f.stem, "choice": c, "val_auc": v[0], "val_acc": v[1], "val_loss": v[2], "test_auc": t[0], "test_acc": t[1], "test_loss": t[2]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?")
    ap.add_argument("options", nargs="?", default="{}")
    ap.add_argument("--analyse", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.analyse:
        rows = analyse()
        run_ = None
        for r in rows:
            if r["run"] != run_:
                run_ = r["run"]
                print(f"\n{run_}\n{'choice':<30} {'val AUC':>8} {'val acc':>8} {'val LL':>7} | {'test AUC':>8} {'test acc':>8} {'test LL':>7}")
            print(f"{r['choice']:<30} {r['val_auc']:8.3f} {r['val_acc']:8.3f} {r['val_loss']:7.3f} | {r['test_auc']:8.3f} {r['test_acc']:8.3f} {r['test_loss']:7.3f}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return
    run(args.name, json.loads(args.options))


if __name__ == "__main__":
    main()
