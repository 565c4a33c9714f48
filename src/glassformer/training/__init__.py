"""Training: one loop for every objective, optimisers and schedules, checkpoints, configs.

    from glassformer.training import Trainer, TrainConfig
    trainer = Trainer(model, TrainConfig(task="gpt", max_steps=500), train_data, val_data, run_dir="runs/x")
    trainer.fit()

or from the command line: ``glassformer train gpt --data notes.txt --out runs/notes``.
"""

from glassformer.io import unwrap_model
from glassformer.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from glassformer.training.config import TrainConfig
from glassformer.training.objectives import compute_loss, token_loss_sum
from glassformer.training.optim import Schedule, build_optimizer, param_groups
from glassformer.training.runtime import ProcessContext
from glassformer.training.trainer import Trainer, TrainingDiverged, TrainResult

__all__ = [
    "ProcessContext", "Schedule", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "build_optimizer",
    "compute_loss", "latest_checkpoint", "load_checkpoint", "param_groups", "save_checkpoint", "token_loss_sum",
    "unwrap_model",
]
