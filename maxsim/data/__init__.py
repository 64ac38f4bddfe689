"""Training data: the folder format, its checks, and batches built from cached tokens."""

from maxsim.lazy import lazy_exports

__all__ = ["DataError", "TrainingData", "read_beir_split"]
__getattr__, __dir__ = lazy_exports(globals(), {"DataError": "maxsim.data.errors",
                                                "TrainingData": "maxsim.data.training_folder",
                                                "read_beir_split": "maxsim.data.training_folder"})
