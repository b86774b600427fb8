"""Metrics to disk: one row per logged step in JSONL and CSV, and a loss-curve PNG.

Both files are flushed after every row (and fsynced before every checkpoint), so a killed run
keeps everything up to its last step. Appending is the only write during a run; a fault in the
middle of one (a full disk, a power cut) can only tear the *last* line of metrics.jsonl.

On resume the files are rebuilt, atomically, from:
  - the rows of metrics.jsonl up to the resumed step: a line that does not parse (the torn
    last line) is dropped with a note; rows after the step belong to the lost future of the
    killed run and are dropped too
  - the rows the checkpoint carries (those logged since the previous checkpoint): they fill
    whatever the file lost, so the metrics always end exactly at the checkpoint's step
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

from .files import atomic_write

FIELDS = ("step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "elapsed_s")


def read_rows(path: Path) -> tuple[list[dict], list[int]]:
    """(rows, numbers of the lines that are not a complete row) of a metrics.jsonl."""
    rows, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError("not a metrics row")
            except ValueError:
                bad.append(n)
                continue
            rows.append(row)
    return rows, bad


class MetricsWriter:
    def __init__(self, out_dir: str | os.PathLike, resume_step: int | None = None, carried_rows=()):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl_path, self.csv_path = out / "metrics.jsonl", out / "metrics.csv"
        self.rows: list[dict] = []
        if resume_step is not None:
            self.rows = self._rows_for_resume(resume_step, carried_rows)
        # rebuild both files from the kept rows (fresh run: empty files with a CSV header)
        atomic_write(self.jsonl_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in self.rows), "w")
        atomic_write(self.csv_path, lambda f: self._write_csv(f, self.rows), "w")
        self._jsonl_file = open(self.jsonl_path, "a", encoding="utf-8")
        self._csv_file = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=FIELDS, extrasaction="ignore")

    def _rows_for_resume(self, step: int, carried_rows) -> list[dict]:
        rows, bad = read_rows(self.jsonl_path) if self.jsonl_path.exists() else ([], [])
        if bad:
            print(f"note: {self.jsonl_path}: dropped {len(bad)} incomplete line(s) (line {', '.join(map(str, bad))}; "
                  f"a write was cut off); the checkpoint restores the rows it carries", file=sys.stderr)
        later = [r["step"] for r in rows if r["step"] > step]
        if later:
            print(f"note: {self.jsonl_path}: dropped the rows of steps {min(later)}..{max(later)}, written after the "
                  f"checkpoint of step {step}; those steps run again", file=sys.stderr)
        by_step = {r["step"]: {k: r.get(k) for k in FIELDS} for r in rows if r["step"] <= step}
        by_step.update((r["step"], dict(r)) for r in carried_rows if r["step"] <= step)
        return [by_step[s] for s in sorted(by_step)]

    @staticmethod
    def _write_csv(f, rows) -> None:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def log(self, row: dict) -> dict:
        row = {k: row.get(k) for k in FIELDS}
        self.rows.append(row)
        self._jsonl_file.write(json.dumps(row) + "\n")
        self._jsonl_file.flush()
        self._csv.writerow(row)
        self._csv_file.flush()
        return row

    def sync(self) -> None:
        """Make the rows so far durable (called before each checkpoint, which they must not trail)."""
        for f in (self._jsonl_file, self._csv_file):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        """Close both files. A row that cannot be flushed (a full disk) is not re-raised here: close
        runs while the error that caused it is already propagating."""
        for f in (self._jsonl_file, self._csv_file):
            try:
                f.close()
            except OSError:
                pass


def plot_loss_curve(rows: list[dict], path: str | os.PathLike, title: str = "loss") -> Path | None:
    """Train and val loss vs step into a PNG (log-scale y when the loss spans > 1 decade).

    Written atomically (a unique temp file, then renamed), so a viewer never sees a half-written image.
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
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
