"""Metrics to disk: one row per logged step in JSONL and CSV, and a loss-curve PNG.

Both files are flushed after every row, so a killed run keeps everything up to its last step.
On resume, rows after the resumed step are dropped first (they belong to the lost future of the
killed run), so the files always describe one consistent run.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

FIELDS = ("step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "elapsed_s")


class MetricsWriter:
    def __init__(self, out_dir: str | os.PathLike, resume_step: int | None = None):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl_path, self.csv_path = out / "metrics.jsonl", out / "metrics.csv"
        self.rows: list[dict] = []
        if resume_step is not None and self.jsonl_path.exists():
            with open(self.jsonl_path) as f:
                self.rows = [r for r in map(json.loads, filter(str.strip, f)) if r["step"] <= resume_step]
        # rewrite both files from the kept rows (fresh run: empty files with a CSV header)
        with open(self.jsonl_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        self._csv_file = open(self.csv_path, "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=FIELDS, extrasaction="ignore")
        self._csv.writeheader()
        for r in self.rows:
            self._csv.writerow(r)
        self._csv_file.flush()
        self._jsonl_file = open(self.jsonl_path, "a")

    def log(self, row: dict) -> None:
        row = {k: row.get(k) for k in FIELDS}
        self.rows.append(row)
        self._jsonl_file.write(json.dumps(row) + "\n")
        self._jsonl_file.flush()
        self._csv.writerow(row)
        self._csv_file.flush()

    def close(self) -> None:
        self._jsonl_file.close()
        self._csv_file.close()


def plot_loss_curve(rows: list[dict], path: str | os.PathLike, title: str = "loss") -> Path | None:
    """Train and val loss vs step into a PNG (log-scale y when the loss spans > 1 decade).

    Written to a temp name then renamed, so a viewer never sees a half-written image.
    Returns None when there is nothing to plot yet.
    """
    train = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    if train:
        ax.plot(*zip(*train), lw=1.0, alpha=0.8, label="train")
    if val:
        ax.plot(*zip(*val), "o-", lw=1.5, ms=3, label="val")
    losses = [v for _, v in train + val if v is not None and math.isfinite(v) and v > 0]
    if losses and max(losses) / min(losses) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
