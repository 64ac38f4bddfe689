"""Training: the typed config, the loop, checkpoints, distributed helpers and reports."""

from maxsim.lazy import lazy_exports

__all__ = ["TrainConfig", "Trainer"]
__getattr__, __dir__ = lazy_exports(globals(), {"TrainConfig": "maxsim.training.config",
                                                "Trainer": "maxsim.training.trainer"})
