"""rnnkit.train: a model-agnostic training kit for recurrent models.

It knows how recurrent models are trained (truncated BPTT, state carrying, clipping,
teacher forcing, checkpoints, DDP) and nothing of any cell's internals.
"""

from rnnkit.train.callbacks import (
    Callback,
    CSVLogger,
    JSONLLogger,
    LossCurvePlot,
    ProgressBar,
    TensorBoardLogger,
    read_metrics,
    tensorboard_available,
)
from rnnkit.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    sweep_temporaries,
    unwrap_model,
)
from rnnkit.train.config import TrainConfig
from rnnkit.train.distributed import (
    DistInfo,
    cleanup_distributed,
    finish_process,
    get_rank,
    get_world_size,
    is_main_process,
    setup_distributed,
)
from rnnkit.train.evaluate import evaluate_lm
from rnnkit.train.malloc import tune_malloc
from rnnkit.train.ntasgd import NTASGD
from rnnkit.train.outdir import OutDirInUse
from rnnkit.train.plots import plot_loss_curve
from rnnkit.train.schedule import ScheduledSampler, TeacherForcingSchedule, autoregressive_unroll
from rnnkit.train.seed import get_rng_state, seed_everything, seed_rank, set_rng_state
from rnnkit.train.state import count_tokens, detach_state, lm_loss, move_to
from rnnkit.train.trainer import StepFn, Trainer

__all__ = [
    "tune_malloc",
    "CSVLogger",
    "Callback",
    "DistInfo",
    "JSONLLogger",
    "LossCurvePlot",
    "NTASGD",
    "OutDirInUse",
    "ProgressBar",
    "ScheduledSampler",
    "StepFn",
    "TeacherForcingSchedule",
    "TensorBoardLogger",
    "TrainConfig",
    "Trainer",
    "autoregressive_unroll",
    "cleanup_distributed",
    "finish_process",
    "count_tokens",
    "detach_state",
    "evaluate_lm",
    "get_rank",
    "get_rng_state",
    "get_world_size",
    "is_main_process",
    "latest_checkpoint",
    "list_checkpoints",
    "lm_loss",
    "load_checkpoint",
    "move_to",
    "plot_loss_curve",
    "read_metrics",
    "save_checkpoint",
    "seed_everything",
    "seed_rank",
    "set_rng_state",
    "setup_distributed",
    "sweep_temporaries",
    "tensorboard_available",
    "unwrap_model",
]
