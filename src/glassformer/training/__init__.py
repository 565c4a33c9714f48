"""Training: one loop for every objective, optimisers and schedules, checkpoints, configs.

    from glassformer.training import Trainer, TrainConfig
    trainer = Trainer(model, TrainConfig(task="gpt", max_steps=500), train_data, val_data, run_dir="runs/x")
    trainer.fit()

or from the command line (:mod:`glassformer.cli.train`): ``glassformer train gpt --data notes.txt --out runs/notes``;
what that runs is :func:`glassformer.training.run.run_training`.

Names are imported on first use (PEP 562), so ``import glassformer.training.config`` for
``glassformer train --help`` does not import torch.
"""

from __future__ import annotations

from glassformer.lazy import lazy_exports

_EXPORTS = {
    "unwrap_model": "glassformer.io",
    "latest_checkpoint": "glassformer.training.checkpoint", "load_checkpoint": "glassformer.training.checkpoint",
    "save_checkpoint": "glassformer.training.checkpoint",
    "TrainConfig": "glassformer.training.config",
    "compute_loss": "glassformer.training.objectives", "token_loss_sum": "glassformer.training.objectives",
    "Schedule": "glassformer.training.optim", "build_optimizer": "glassformer.training.optim",
    "param_groups": "glassformer.training.optim",
    "ProcessContext": "glassformer.training.runtime",
    "Trainer": "glassformer.training.trainer", "TrainingDiverged": "glassformer.training.trainer",
    "TrainResult": "glassformer.training.trainer",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
