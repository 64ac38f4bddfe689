"""RAGatouille's API over maxsim: ``from maxsim.ragatouille import RAGTrainer, RAGPretrainedModel``.

A translation only (RAGatouille 0.0.9.post2's calls, arguments, return values and files), with
everything done by maxsim underneath: :func:`maxsim.prepare_training_data`, :class:`Trainer`,
:class:`Retriever` and the index. What differs from RAGatouille, on purpose: ``train`` returns
the best checkpoint (a dev slice is held out when there are enough queries), training runs on a
CPU or one GPU in the calling process (a notebook is fine), mining honours the minimum rank,
ranks are 1-based everywhere (0-based with ``zero_index_ranks``), and clearing encodings does
not sleep. docs/ragatouille.md says what is not carried over.

- :mod:`~maxsim.ragatouille.trainer`: ``RAGTrainer`` (and its torchrun launcher);
- :mod:`~maxsim.ragatouille.training_files`: the raw data it takes and RAGatouille's training files;
- :mod:`~maxsim.ragatouille.model`: ``RAGPretrainedModel``;
- :mod:`~maxsim.ragatouille.side_files`: RAGatouille's side files in an index folder;
- :mod:`~maxsim.ragatouille.langchain`: the LangChain retriever and compressor.
"""

from maxsim.ragatouille.model import RAGPretrainedModel, llama_index_sentence_splitter
from maxsim.ragatouille.side_files import write_side_files
from maxsim.ragatouille.trainer import RAGTrainer

__all__ = ["RAGPretrainedModel", "RAGTrainer", "llama_index_sentence_splitter", "write_side_files"]
