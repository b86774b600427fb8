"""Fault injection against `babygpt train` run directories. Not a pytest file (it takes minutes):

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python tests/fault/run_faults.py [--quick] [--work DIR]

Every scenario damages a run, then lets `babygpt train --resume` finish it, and checks that
nothing was lost: the final ckpt.pt, best.pt and metrics equal an uninterrupted reference run's
bit for bit, the metrics are complete (steps 0..N, every line parses), best.pt is the step
ckpt.pt calls best, and no temp file or stale last.pt is left. Scenarios:

  kill -9 at chosen moments   a child process patches one internal function to SIGKILL itself
                              at its k-th call: mid torch.save, temp written before its rename,
                              after ckpt.pt before best.pt, after ckpt.pt before its metrics row,
                              half a metrics line written, right after an optimizer update,
                              during the metrics rewrite of a resume, during last.pt after Ctrl-C
  kill -9 at random times     from outside, at a uniformly random moment of the training
  SIGINT / SIGTERM            from outside at random moments (exit 130 / 143, last.pt), and twice
  disk full                   the run directory on a small tmpfs filled to several levels (root only)
  corrupt checkpoints         flipped bytes (tensor data, pickle, anywhere), truncations, appended
                              bytes, NaN weights with a valid digest, code-running pickles: load_checkpoint
                              must refuse each (or load contents identical to the original)
  concurrent runs             two runs started into one directory at once: one runs, one is refused

The last line printed is the summary the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVAL = 60, 10
TRAIN = ["train", "--preset", "babygpt", "--tokenizer", "char", "--batch-size", "8", "--max-iters", str(STEPS),
         "--eval-interval", str(EVAL), "--eval-iters", "2", "--warmup", "5", "--dropout", "0.1", "--seed", "0",
         "--threads", "1", "--no-progress", "--backend", "eager"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "PYTHONUNBUFFERED": "1"}
TRAIN_SECONDS = [2.0]  # how long the reference run trains here (measured; random signals land inside it)

# -------------------------------------------------------------------------------- the faulty child
CHILD = r'''
import os, signal, sys
moment, k = sys.argv[1], int(sys.argv[2])
argv = sys.argv[3:]
calls = [0]

def die_at_kth(when=True):
    if when:
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

import torch
from babygpt_ext.train import files, trainer, metrics

if moment == "torch.save mid-write":
    real_save = torch.save
    def save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        calls[0] += 1
        if calls[0] == k:
            size = os.path.getsize(f)
            os.truncate(f, size // 2)           # what is on disk when the writer is killed mid-way
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save
elif moment in ("ckpt temp before rename", "last.pt temp after SIGINT", "metrics rewrite on resume"):
    prefix = {"ckpt temp before rename": ".ckpt.pt.", "last.pt temp after SIGINT": ".last.pt.",
              "metrics rewrite on resume": ".metrics.jsonl."}[moment]
    real_commit = files.commit
    def commit(tmp, path):
        die_at_kth(tmp.name.startswith(prefix))
        return real_commit(tmp, path)
    files.commit = commit
elif moment == "after ckpt.pt before best.pt":
    real_copy = trainer.atomic_copy
    def atomic_copy(src, dst):
        die_at_kth()
        return real_copy(src, dst)
    trainer.atomic_copy = atomic_copy
elif moment in ("after ckpt.pt before its row", "half a metrics row"):
    real_log = metrics.MetricsWriter.log
    def log(self, row):
        if moment == "half a metrics row":
            calls[0] += 1
            if calls[0] == k:
                import json
                line = json.dumps({f: row.get(f) for f in metrics.FIELDS}) + "\n"
                self._jsonl_file.write(line[:len(line) // 2])
                self._jsonl_file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        else:
            die_at_kth(row.get("val_loss") is not None and row.get("step", 0) > 0)
        return real_log(self, row)
    metrics.MetricsWriter.log = log
if moment in ("right after an optimizer update", "last.pt temp after SIGINT"):
    real_step = torch.optim.AdamW.step
    updates = [0]
    def step(self, *a, **kw):
        out = real_step(self, *a, **kw)
        updates[0] += 1
        if moment == "last.pt temp after SIGINT" and updates[0] == 17:
            os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C; then kill -9 while last.pt is written
        elif moment == "right after an optimizer update" and updates[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    torch.optim.AdamW.step = step

from babygpt_ext.cli import main
sys.exit(main(argv))
'''

MOMENTS = {  # moment -> the k-th occurrences to kill at (each is one scenario)
    "torch.save mid-write": (1, 3, 6),
    "ckpt temp before rename": (1, 4, 6),
    "after ckpt.pt before best.pt": (1, 3, 6),
    "after ckpt.pt before its row": (1, 3, 6),
    "half a metrics row": (5, 33, 61),
    "right after an optimizer update": (1, 30, 60),
    "last.pt temp after SIGINT": (1,),
    "metrics rewrite on resume": (1,),
}
QUICK_MOMENTS = {m: ks[:1] for m, ks in MOMENTS.items()}


def cli(args, out, **kw):
    return subprocess.run([sys.executable, "-m", "babygpt_ext", *args, "--out", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=600, **kw)


def child(moment, k, args, out):
    return subprocess.run([sys.executable, "-c", CHILD, moment, str(k), *args, "--out", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=600)


# -------------------------------------------------------------------------------- the checks
def load(path):
    from babygpt_ext.train import load_checkpoint
    return load_checkpoint(path)


def read_rows(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]  # every line must parse


def same_state(a, b) -> bool:
    import torch
    if a["step"] != b["step"] or a.keys() - {"sha256", "versions"} != b.keys() - {"sha256", "versions"}:
        return False
    weights = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    moments = all(torch.equal(v, b["optimizer"]["state"][i][n]) for i, s in a["optimizer"]["state"].items()
                  for n, v in s.items())
    return weights and moments and a["best_val_loss"] == b["best_val_loss"]


def nothing_lost(out: Path, ref: Path) -> list[str]:
    """What differs from the reference run; [] when nothing was lost."""
    problems = []
    try:
        ck, ref_ck = load(out / "ckpt.pt"), load(ref / "ckpt.pt")
        if not same_state(ck, ref_ck):
            problems.append("final ckpt.pt differs from the reference")
        best = load(out / "best.pt")
        if best["step"] != ck["best_step"] or not same_state(best, load(ref / "best.pt")):
            problems.append(f"best.pt is step {best['step']}, ckpt.pt's best is {ck['best_step']}")
        rows, ref_rows = read_rows(out), read_rows(ref)
        keys = ("step", "train_loss", "val_loss", "lr", "grad_norm", "tokens_seen")
        if [r["step"] for r in rows] != list(range(STEPS + 1)):
            problems.append(f"metrics steps {[r['step'] for r in rows][:5]}... (not 0..{STEPS})")
        elif [[r[k] for k in keys] for r in rows] != [[r[k] for k in keys] for r in ref_rows]:
            problems.append("metrics values differ from the reference")
        with open(out / "metrics.csv") as f:
            if sum(1 for _ in f) != STEPS + 2:
                problems.append("metrics.csv row count")
    except Exception as e:  # noqa: BLE001 - every failure is a finding here
        problems.append(f"{type(e).__name__}: {e}")
    leftovers = [p.name for p in out.glob(".*.tmp")] + (["last.pt"] if (out / "last.pt").exists() else [])
    if leftovers:
        problems.append(f"left behind: {leftovers}")
    return problems


def finish(out: Path, ref: Path, tries=4) -> tuple[list[str], int]:
    """--resume until the run completes (each resume is one process); (problems, resumes)."""
    for n in range(1, tries + 1):
        r = cli(TRAIN + ["--resume"], out)
        if r.returncode == 0:
            return nothing_lost(out, ref), n
        if "holds no ckpt.pt" in r.stderr:  # killed before the first checkpoint: a new run is the way on
            r = cli(TRAIN + ["--force"], out)
            if r.returncode == 0:
                return nothing_lost(out, ref), n
        last = (r.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    return [f"resume failed {tries}x: rc {r.returncode}: {last}"], tries


USER_ERRORS = ("CheckpointError", "TrainError", "RunDirBusy", "RunDirTaken", "ResumeConflict", "TrainingDiverged")


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def expected_error(r) -> bool:
    """The run ended on one of babygpt_ext's UserErrors (the CLI's top-level handler prints those as
    one line; before it is installed, the traceback above that line is the interpreter's)."""
    last = one_line_error(r)
    return "Traceback" not in r.stderr or any(f"{name}: " in last for name in USER_ERRORS)


# -------------------------------------------------------------------------------- scenarios
def scenario_moments(work, ref, moments, log):
    results = []
    for moment, ks in moments.items():
        for k in ks:
            out = work / f"m-{moment.replace(' ', '_').replace('.', '')}-{k}"
            if moment == "metrics rewrite on resume":
                child("right after an optimizer update", 25, TRAIN, out)  # a run killed at step 25 ...
                r = child(moment, k, TRAIN + ["--resume"], out)           # ... and its resume, killed while it
                #                                                           rebuilds the metrics files
            else:
                r = child(moment, k, TRAIN, out)
            killed = r.returncode == -signal.SIGKILL
            problems, resumes = finish(out, ref)
            results.append((f"kill -9 {moment} #{k}", killed, problems))
            log(f"kill -9 {moment} #{k}: killed={killed} resumes={resumes} -> {problems or 'nothing lost'}")
    return results


def start_and_wait_for_training(args, out):
    p = subprocess.Popen([sys.executable, "-m", "babygpt_ext", *args, "--out", str(out)], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith(("starting", "resuming")):
            return p
    return p


def scenario_signals(work, ref, n_kill, n_int, n_term, log, rng):
    results = []
    plan = [("SIGKILL", signal.SIGKILL)] * n_kill + [("SIGINT", signal.SIGINT)] * n_int + \
           [("SIGTERM", signal.SIGTERM)] * n_term + [("SIGINT twice", signal.SIGINT)]
    for i, (name, sig) in enumerate(plan):
        out = work / f"s-{i}-{name.replace(' ', '_')}"
        p = start_and_wait_for_training(TRAIN, out)
        delay = rng.uniform(0.0, TRAIN_SECONDS[0])
        time.sleep(delay)
        p.send_signal(sig)
        if name == "SIGINT twice":
            time.sleep(0.01)
            p.send_signal(sig)
        _, err = p.communicate(timeout=300)
        rc = p.returncode
        # 0: the run had finished; -15: SIGTERM landed outside the training loop (start-up, the final
        # report), where its default action ends the process (the shell sees 143 either way)
        expected = {signal.SIGKILL: (-9,), signal.SIGINT: (130,), signal.SIGTERM: (143, -15)}[sig] + (0,)
        clean = rc in expected and "Traceback" not in err
        problems, resumes = finish(out, ref) if rc != 0 else (nothing_lost(out, ref), 0)
        if not clean:
            problems = [f"exit {rc}: {err.strip().splitlines()[-1:] if err.strip() else ''}"] + problems
        results.append((f"{name} at +{delay:.2f}s", rc, problems))
        log(f"{name} at +{delay:.2f}s: exit {rc}, resumes={resumes} -> {problems or 'nothing lost'}")
    return results


def scenario_disk_full(work, ref, levels, log):
    mnt = Path(tempfile.mkdtemp(prefix="babygpt-tmpfs-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        log("disk full: skipped (mounting a tmpfs needs root)")
        return []
    results = []
    try:
        for free_kb in levels:
            out = mnt / "run"
            filler = mnt / "filler"
            total = shutil.disk_usage(mnt).free
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, total - free_kb * 1024))
            r = cli(TRAIN, out)
            err = one_line_error(r)
            filler.unlink()                                   # space is freed ...
            problems, resumes = finish(out, ref) if r.returncode else (nothing_lost(out, ref), 0)
            if r.returncode and not expected_error(r):
                problems = [f"unexpected error: {err}"] + problems
            results.append((f"disk full at {free_kb} KB free", r.returncode, problems))
            log(f"disk full, {free_kb} KB free: exit {r.returncode} ({err[:150]}), resumes={resumes} "
                f"-> {problems or 'nothing lost'}")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        subprocess.run(["umount", str(mnt)])
        mnt.rmdir()
    return results


def scenario_corrupt(work, ref, n_flips, log, rng):
    """In-process: load_checkpoint on damaged copies of the reference ckpt.pt."""
    import struct
    import zipfile

    import torch

    from babygpt_ext.train import CheckpointError, load_checkpoint, save_checkpoint
    from babygpt_ext.train.checkpoint import content_digest

    good = (ref / "ckpt.pt").read_bytes()
    original = content_digest(load_checkpoint(ref / "ckpt.pt"))
    regions = {}
    with zipfile.ZipFile(ref / "ckpt.pt") as z:
        for info in z.infolist():
            h = info.header_offset
            n, e = struct.unpack("<HH", good[h + 26:h + 30])
            kind = "pickle" if info.filename.endswith("data.pkl") else "tensor data" if "/data/" in info.filename \
                else "zip metadata"
            regions.setdefault(kind, []).append((h + 30 + n + e, h + 30 + n + e + info.file_size))
    path = work / "corrupt.pt"
    tally = {}

    def attempt(kind, data):
        path.write_bytes(data)
        try:
            back = load_checkpoint(path)
            outcome = "loaded, identical" if content_digest(back) == original else "LOADED, DIFFERENT"
        except (CheckpointError, FileNotFoundError) as e:
            outcome = "refused" if "\n" not in str(e) else "refused (multi-line message)"
        except Exception as e:  # noqa: BLE001
            outcome = f"crashed: {type(e).__name__}"
        tally.setdefault(kind, {}).setdefault(outcome, 0)
        tally[kind][outcome] += 1

    for kind, spans in regions.items():
        for _ in range(n_flips):
            a, b = rng.choice(spans)
            if b <= a:
                continue
            raw = bytearray(good)
            raw[rng.randrange(a, b)] ^= 1 << rng.randrange(8)
            attempt(f"1 bit flipped in {kind}", bytes(raw))
    for _ in range(n_flips):
        raw = bytearray(good)
        for _ in range(16):
            raw[rng.randrange(len(raw))] ^= 0xFF
        attempt("16 bytes flipped anywhere", bytes(raw))
    for _ in range(n_flips):
        raw = bytearray(good)
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        attempt("1 bit flipped anywhere", bytes(raw))
    for frac in (0.0, 0.001, 0.1, 0.5, 0.9, 0.999):
        attempt("truncated", good[:int(frac * len(good))])
    attempt("truncated", good[:-1])
    attempt("appended garbage", good + os.urandom(100))
    ck = load_checkpoint(ref / "ckpt.pt")
    for i, name in enumerate(list(ck["model"])[:4]):
        bad = {**ck, "model": dict(ck["model"])}
        t = bad["model"][name].clone()
        t.view(-1)[0] = (float("nan"), float("inf"), -float("inf"), float("nan"))[i]
        bad["model"][name] = t
        save_checkpoint(path, bad)  # a valid digest over bad contents
        attempt("NaN/Inf weights, valid digest", path.read_bytes())

    class RunsCode:
        def __init__(self, cmd):
            self.cmd = cmd

        def __reduce__(self):
            return (os.system, (self.cmd,))

    marker = work / "pwned"
    for i in range(5):
        torch.save({**ck, "extra": RunsCode(f"touch {marker}")} if i % 2 else {"model": RunsCode(f"touch {marker}")},
                   path)
        attempt("code-running pickle", path.read_bytes())
    if marker.exists():
        tally.setdefault("code-running pickle", {})["RAN CODE"] = 1
    for kind, outcomes in tally.items():
        log(f"corrupt, {kind}: {outcomes}")
    bad = sum(n for o in tally.values() for k, n in o.items() if k not in ("refused", "loaded, identical"))
    return tally, bad


def scenario_cli_corrupt(work, ref, log):
    """Damaged checkpoints through the CLI: sample and resume refuse them in one line, exit 1."""
    results = []
    for kind in ("flipped", "truncated", "nan"):
        out = work / f"cli-corrupt-{kind}"
        shutil.copytree(ref, out)
        raw = bytearray((out / "ckpt.pt").read_bytes())
        if kind == "flipped":
            raw[len(raw) // 2] ^= 0x10
        elif kind == "truncated":
            raw = raw[: len(raw) // 3]
        else:
            import torch
            from babygpt_ext.train import load_checkpoint, save_checkpoint
            ck = load_checkpoint(out / "ckpt.pt")
            next(iter(ck["model"].values())).view(-1)[0] = float("nan")
            save_checkpoint(out / "ckpt.pt", ck)
            raw = (out / "ckpt.pt").read_bytes()
        (out / "ckpt.pt").write_bytes(bytes(raw))
        for cmd in (["sample", "--ckpt", str(out / "ckpt.pt"), "--max-new-tokens", "3"],
                    TRAIN + ["--resume", "--out", str(out)]):
            r = subprocess.run([sys.executable, "-m", "babygpt_ext", *cmd], env=ENV, capture_output=True, text=True)
            ok = r.returncode != 0 and "refusing to load" in r.stderr
            results.append((f"{kind} via {cmd[0]}", r.returncode, [] if ok else [one_line_error(r)]))
            log(f"corrupt {kind} ckpt via {cmd[0]}: exit {r.returncode}: {one_line_error(r)[:160]}")
    return results


def scenario_concurrent(work, n, log):
    """Two runs started into one directory at once (and, every other time, a --resume of it started
    while the winner trains): exactly one runs, the others are refused naming the owner, and the
    winner's files are whole."""
    results = []
    long_run = [a if a != str(STEPS) else "400" for a in TRAIN]
    for i in range(n):
        out = work / f"c-{i}"
        procs = [subprocess.Popen([sys.executable, "-m", "babygpt_ext", *long_run, "--out", str(out)], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        if i % 2:
            procs.append(subprocess.Popen([sys.executable, "-m", "babygpt_ext", *long_run, "--resume", "--out",
                                           str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        outs = [p.communicate(timeout=600) for p in procs]
        rcs = [p.returncode for p in procs]
        refused = [err.strip().splitlines()[-1] for (_, err), rc in zip(outs, rcs) if rc != 0]
        named = sum("in use by another run (PID" in e or "already holds a run" in e or "holds no ckpt.pt" in e
                    for e in refused)
        problems = [] if rcs.count(0) >= 1 and named == len(refused) else [f"exit codes {rcs}: {refused}"]
        try:
            rows = read_rows(out)
            if [r["step"] for r in rows] != list(range(401)):
                problems.append("winner's metrics are not steps 0..400")
            if load(out / "ckpt.pt")["step"] != 400:
                problems.append("winner's ckpt.pt is not step 400")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{type(e).__name__}: {e}")
        if list(out.glob(".*.tmp")):
            problems.append("temp files left")
        results.append((f"{len(procs)} runs into one dir", rcs, problems))
        log(f"concurrent #{i}: exit codes {rcs}; refusals: {[r[:120] for r in refused]} -> "
            f"{problems or 'nothing lost'}")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one occurrence per moment, fewer random signals")
    ap.add_argument("--work", default=None, help="scratch directory (default: a fresh temp dir, removed after)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="babygpt-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    ref = work / "reference"
    r = cli(TRAIN, ref)
    assert r.returncode == 0, r.stderr
    TRAIN_SECONDS[0] = float(r.stdout.split("done:")[1].split(" s\n")[0].rsplit(",", 1)[1])
    log(f"reference run: {STEPS} steps, eval every {EVAL}, {TRAIN_SECONDS[0]:.1f} s of training")
    quick = args.quick
    # cheapest first: the in-process corrupt-file checks, then one or two processes per scenario
    tally, corrupt_bad = scenario_corrupt(work, ref, 10 if quick else 60, log, rng)
    results = scenario_cli_corrupt(work, ref, log)
    results += scenario_concurrent(work, 2 if quick else 4, log)
    results += scenario_disk_full(work, ref, (16, 64, 200) if quick else (8, 32, 96, 160, 256, 400, 640, 1024), log)
    results += scenario_signals(work, ref, 3 if quick else 10, 2 if quick else 8, 1 if quick else 3, log, rng)
    results += scenario_moments(work, ref, QUICK_MOMENTS if quick else MOMENTS, log)

    failed = [(name, p) for name, _, p in results if p]
    for name, p in failed:
        log(f"FAILED {name}: {p}")
    kills = sum(name.startswith(("kill -9", "SIGKILL")) for name, _, _ in results)
    corrupt_cases = sum(sum(o.values()) for o in tally.values())
    print(f"summary: {len(results)} run scenarios ({kills} kill -9, "
          f"{sum(n.startswith('SIGINT') for n, _, _ in results)} SIGINT, "
          f"{sum(n.startswith('SIGTERM') for n, _, _ in results)} SIGTERM, "
          f"{sum(n.startswith('disk full') for n, _, _ in results)} disk-full, "
          f"{sum(n.endswith('into one dir') for n, _, _ in results)} concurrent), {len(failed)} lost something; "
          f"{corrupt_cases} corrupt checkpoint loads, {corrupt_bad} accepted with other contents; "
          f"{time.time() - t0:.0f} s")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed or corrupt_bad else 0


if __name__ == "__main__":
    sys.exit(main())
