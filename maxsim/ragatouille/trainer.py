"""RAGatouille's ``RAGTrainer`` over maxsim: :func:`maxsim.prepare_training_data` and :class:`Trainer`
underneath, on a CPU or one GPU in the calling process, or several GPUs under torchrun."""

from __future__ import annotations

import datetime
import logging
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from maxsim.data.batches import global_batches
from maxsim.data.mining import BM25_LANGUAGES
from maxsim.data.prepare import prepare_training_data
from maxsim.data.training_folder import TrainingData
from maxsim.errors import SettingsError
from maxsim.lexical import DEFAULT_LANGUAGE
from maxsim.model.checkpoint import resolve_model_path
from maxsim.model.formats import detect_format
from maxsim.ragatouille.training_files import MAXSIM_DATA, raw_kind, rows_of, write_ragatouille_files
from maxsim.training import TrainConfig, Trainer

logger = logging.getLogger(__name__)

#: fewer prepared queries than this: no dev slice, and ``train`` returns the last checkpoint
MIN_QUERIES_FOR_DEV = 20
DEV_FRACTION = 0.1


class RAGTrainer:
    """Fine-tune or train a ColBERT model in a few lines, as RAGatouille's ``RAGTrainer``."""

    def __init__(self, model_name: str, pretrained_model_name: str, language_code: str = DEFAULT_LANGUAGE,
                 n_usable_gpus: int = -1) -> None:
        self.model_name = model_name
        self.pretrained_model_name = str(resolve_model_path(pretrained_model_name))  # a clear error when missing
        self.language_code = language_code
        self.n_usable_gpus = n_usable_gpus
        found = detect_format(Path(self.pretrained_model_name))
        logger.info("%s: %s", pretrained_model_name, f"a {found} ColBERT checkpoint, fine-tuned with its own settings"
                    if found else "a plain encoder: a new ColBERT is built on it")
        self.collection: list[str] = []
        self.queries: set[str] | None = None
        self.raw_data: list | None = None
        self.training_triplets: list[list[int]] = []
        self.data_dir: Path | None = None

    def add_documents(self, documents: list[str]) -> None:
        """Documents that are only candidates for mined negatives."""
        self.collection += list(documents)

    def prepare_training_data(
        self,
        raw_data: list[tuple] | list[list],
        all_documents: list[str] | None = None,
        data_out_path: str | Path = "./data/",
        num_new_negatives: int = 10,
        hard_negative_minimum_rank: int = 10,
        mine_hard_negatives: bool = True,
        hard_negative_model_size: str = "small",
        pairs_with_labels: bool = False,
        positive_label: int | str = 1,
        negative_label: int | str = 0,
    ) -> str | Path:
        """Pairs, labelled pairs or triplets (a passage may be a str, a list of str or a dict with
        "content") into a maxsim training folder (``data_out_path/maxsim``) and RAGatouille's
        three files beside it; returns ``data_out_path``.

        Negatives are mined with BM25 in ``language_code`` from ranks ``hard_negative_minimum_rank``
        on (dense mining with the base model for a language BM25 has no stemmer for), or drawn
        at random with ``mine_hard_negatives=False``.
        """
        kind = raw_kind(raw_data, pairs_with_labels, positive_label, negative_label)
        rows = rows_of(raw_data, kind)
        self.raw_data = raw_data
        if hard_negative_model_size != "small":
            logger.info("hard_negative_model_size=%r is RAGatouille's dense miner's size; maxsim mines with BM25",
                        hard_negative_model_size)
        mining: dict[str, Any] = {"mine": "none"}
        if mine_hard_negatives and self.language_code in BM25_LANGUAGES:
            mining = {"mine": "bm25", "bm25_language": self.language_code}
        elif mine_hard_negatives:
            logger.warning("BM25 has no stemmer for %r: mining negatives densely with %s", self.language_code,
                           self.pretrained_model_name)
            mining = {"mine": "dense", "miner_model": self.pretrained_model_name}
        documents = [d for d in self.collection + list(all_documents or []) if isinstance(d, str) and d.strip()]
        out = Path(data_out_path)
        prepare_training_data(
            [rows], out / MAXSIM_DATA, all_documents=documents, kind=kind, negatives=num_new_negatives,
            min_rank=hard_negative_minimum_rank, positive_labels=(str(positive_label),),
            negative_labels=(str(negative_label),), **mining)
        self.data_dir = out
        # every query of raw_data, as RAGatouille keeps them, also one whose pairs are all negative
        asked = list(dict.fromkeys(str(row[0]).strip() for row in raw_data))
        self.queries, self.collection, self.training_triplets = write_ragatouille_files(out, asked)
        return data_out_path

    def train(
        self,
        batch_size: int = 32,
        nbits: int | None = None,
        maxsteps: int = 500_000,
        use_ib_negatives: bool = True,
        learning_rate: float = 5e-6,
        dim: int | None = None,
        doc_maxlen: int | None = None,
        use_relu: bool = False,
        warmup_steps: int | Literal["auto"] = "auto",
        accumsteps: int = 1,
        **maxsim_options,
    ) -> str:
        """Train on the prepared data; returns the path (str) of the best checkpoint.

        One pass over the data, or ``maxsteps`` steps if that is fewer (RAGatouille's meaning).
        ``dim`` and ``doc_maxlen`` default to the base checkpoint's own (128 and 256 for a new
        ColBERT). A dev slice (10%) is held out by itself when there are at least
        :data:`MIN_QUERIES_FOR_DEV` queries, and the best checkpoint on it is returned; with
        fewer, the last one (and the log says why). Other keyword arguments (``epochs``,
        ``dev_fraction``, ``eval_every``, ``output``, ...) are :class:`TrainConfig` fields.
        """
        if self.data_dir is None:
            raise SettingsError("no training data: call prepare_training_data(...) first")
        if use_relu:
            raise SettingsError("use_relu=True is not supported: maxsim's projection is linear, as colbert-ai's "
                                "default")
        if nbits is not None:
            logger.info("nbits=%d is an index setting: pass it when indexing (RAGPretrainedModel.index picks it by "
                        "the corpus's size: 4 under 10,000 documents, else 2)", nbits)
        values: dict[str, Any] = {
            "data": self.data_dir / MAXSIM_DATA, "base_model": self.pretrained_model_name,
            "output": Path(".ragatouille") / "colbert" / "none" / self.model_name /
            datetime.datetime.now().strftime("%Y-%m-%d_%H.%M.%S"),
            "batch_size": batch_size, "use_ib_negatives": use_ib_negatives, "learning_rate": learning_rate,
            "dim": dim, "doc_maxlen": doc_maxlen, "warmup_steps": warmup_steps, "accumulation_steps": accumsteps,
        }
        values.update(maxsim_options)
        values = {k: v for k, v in values.items() if v is not None}
        self._plan(values, maxsteps)
        config = TrainConfig(**values)
        gpus = self._gpus()
        if gpus > 1:
            return str(_torchrun(config, gpus))
        return str(Trainer(config).train())

    def _plan(self, values: dict, maxsteps: int) -> None:
        """A dev slice when there are enough queries, one epoch or ``maxsteps``, a few validations."""
        data = TrainingData.load(values["data"], values.get("nway", 2))
        n_queries = len({e.query for e in data.examples})
        if not {"dev_fraction", "dev_data"} & set(values):
            if n_queries >= MIN_QUERIES_FOR_DEV:
                values["dev_fraction"] = DEV_FRACTION
                logger.info("holding out %d%% of the %d queries as a dev set to choose the best checkpoint",
                            round(100 * DEV_FRACTION), n_queries)
            else:
                logger.warning("only %d queries: too few for a dev slice (%d needed), so train() returns the last "
                               "checkpoint, not the best", n_queries, MIN_QUERIES_FOR_DEV)
        kept = len(data.examples) - round(values.get("dev_fraction", 0) * n_queries)
        steps = len(global_batches(range(max(1, kept)), values["batch_size"], 1))
        if "max_steps" not in values and "epochs" not in values and maxsteps < steps:
            values["max_steps"] = maxsteps
        total = values.get("max_steps") or steps * values.get("epochs", 1)
        values.setdefault("eval_every", max(1, math.ceil(total / 4)))
        values.setdefault("save_every", values["eval_every"])

    def _gpus(self) -> int:
        import torch

        available = torch.cuda.device_count()
        wanted = available if self.n_usable_gpus == -1 else self.n_usable_gpus
        return max(0, min(wanted, available))


def _torchrun(config: TrainConfig, gpus: int, device: str = "cuda") -> Path:
    """Train under torchrun with ``gpus`` processes (one GPU each) in a subprocess, streaming its
    log; returns the checkpoint it printed last (the best)."""
    folder = Path(config.output)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, delete=False) as handle:
        handle.write(config.model_copy(update={"device": device}).to_yaml())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "maxsim", "train", "--config", handle.name]
    logger.info("training with %d processes: %s", gpus, " ".join(command))
    last = ""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            last = line.strip() or last
    os.unlink(handle.name)
    if process.returncode != 0:
        raise RuntimeError(f"torchrun training failed (exit status {process.returncode}); its log is above")
    return Path(last)
