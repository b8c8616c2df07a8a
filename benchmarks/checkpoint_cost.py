"""What checkpoints cost a training: wall time with none, with one every epoch and with ``auto``.

    python benchmarks/checkpoint_cost.py [--mnist ../shared/data/mnist.npz] [--out results/checkpoints]

Prints (and writes ``table.md``) one row per data set and policy: seconds, checkpoints saved, seconds
spent saving, the mean save, and the overhead against the run without checkpoints in the same process.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()

import jax  # noqa: E402

from s2e_jax.config import TrainConfig  # noqa: E402
from s2e_jax.train import train  # noqa: E402


def measure(cfg: TrainConfig, every, root: str) -> dict:
    out = os.path.join(root, f"{os.path.basename(cfg.dataset)}_{every}")
    t0 = time.perf_counter()
    train(cfg.replace(out=out, checkpoint_every=every))
    wall = time.perf_counter() - t0
    timing = json.load(open(os.path.join(out, "timing.json")))
    return dict(seconds=wall, saved=timing["checkpoints_saved"], save_s=timing["checkpoint_seconds"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist.npz"))
    ap.add_argument("--out", default="results/checkpoints")
    a = ap.parse_args()
    settings = [("digits (MLP, 200 epochs)", TrainConfig(dataset="digits", progress=False))]
    if os.path.exists(a.mnist):  # the cpu scale of experiments/paper.py
        settings.append(("MNIST (MLP, 10 epochs, full)", TrainConfig(dataset=a.mnist, epochs=10, decay_start=4,
                                                                     t_k=0.5, noise="pair", noise_rate=0.45,
                                                                     progress=False)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in settings:
            train(cfg.replace(epochs=2, decay_start=1))  # compile caches warm for every policy alike
            base = measure(cfg, 0, tmp)
            for every in (0, 1, "auto"):
                r = base if every == 0 else measure(cfg, every, tmp)
                over = (r["seconds"] - base["seconds"]) / base["seconds"]
                rows.append((name, str(every), f"{r['seconds']:.2f}", str(r["saved"]), f"{r['save_s']:.2f}",
                             f"{r['save_s'] / r['saved'] * 1e3:.0f}" if r["saved"] else "-",
                             f"{100 * r['save_s'] / r['seconds']:.1f}%", f"{100 * over:+.1f}%"))
    head = ("setting", "checkpoint_every", "seconds", "saved", "saving s", "ms/save", "saving share", "vs none")
    lines = [f"Generated {datetime.date.today()} by `python benchmarks/checkpoint_cost.py` on "
             f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {os.cpu_count()} cores).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    os.makedirs(a.out, exist_ok=True)
    open(os.path.join(a.out, "table.md"), "w").write(text + "\n")


if __name__ == "__main__":
    main()
