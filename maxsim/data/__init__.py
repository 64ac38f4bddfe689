"""Training data: the folder format, its checks, and batches built from cached tokens."""

from maxsim.data.errors import DataError
from maxsim.data.training_folder import TrainingData, read_beir_split

__all__ = ["DataError", "TrainingData", "read_beir_split"]
