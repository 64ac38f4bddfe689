"""Training: the typed config, the loop, checkpoints, distributed helpers and reports."""

from maxsim.training.config import TrainConfig
from maxsim.training.trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
