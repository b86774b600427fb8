"""Training: TrainConfig, the Trainer (single process or DDP under torchrun), checkpoints,
the LR schedule and metrics files.

    >>> from babygpt_ext.train import Trainer, TrainConfig
    >>> trainer = Trainer(model, train_ids, val_ids, TrainConfig(max_iters=200), out_dir="runs/demo")
    >>> trainer.fit()["val_loss"]
"""

from .checkpoint import (CheckpointError, capture_rng, load_checkpoint, load_newest, newest_checkpoint, restore_rng,
                         save_checkpoint, strip_wrappers)
from .config import TrainConfig
from .distributed import DistInfo
from .interrupt import RunInterrupted
from .metrics import MetricsWriter, plot_loss_curve
from .resume import ResumeConflict
from .rundir import RunDirBusy, RunDirTaken, claim_run_dir
from .schedule import lr_at, lr_for_config
from .trainer import Trainer, TrainingDiverged, build_optimizer

__all__ = ["Trainer", "TrainConfig", "build_optimizer", "save_checkpoint", "load_checkpoint", "load_newest",
           "newest_checkpoint", "CheckpointError", "capture_rng", "restore_rng", "strip_wrappers", "MetricsWriter",
           "plot_loss_curve", "lr_at", "lr_for_config", "DistInfo", "claim_run_dir", "RunDirBusy", "RunDirTaken",
           "ResumeConflict", "TrainingDiverged", "RunInterrupted"]
