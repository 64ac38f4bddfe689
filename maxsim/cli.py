"""The ``maxsim`` command line."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from maxsim.cli_options import options_from, parameter, with_options
from maxsim.data.settings import PrepareSettings
from maxsim.errors import validation_message
from maxsim.training.config import TrainConfig

app = typer.Typer(
    help="Train ColBERT late-interaction retrievers on your own data, then search with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


#: where a command's model runs: one option, the same for every command that loads a model
Device = Annotated[str, typer.Option(help="Where the model runs: auto (a CUDA GPU where one is visible, in bf16 "
                                     "autocast; else the CPU), cpu, cuda or cuda:N.")]

HybridFlag = Annotated[bool, typer.Option("--hybrid", help="Fuse MaxSim's ranking with BM25's over the texts (the index's BM25 side); any of the next options implies it.")]
Fusion = Annotated[str | None, typer.Option("--fusion", help="Hybrid fusion: weighted (min-max normalised scores) or rrf (reciprocal rank fusion) [default: weighted, chosen on SciFact's dev slice].", show_default=False)]
FusionWeight = Annotated[float | None, typer.Option("--fusion-weight", help="Weighted fusion: MaxSim's share, BM25 getting the rest [default: 0.7].", show_default=False)]
RrfK = Annotated[int | None, typer.Option("--rrf-k", help="Reciprocal rank fusion's constant [default: 60].", show_default=False)]
HybridDepth = Annotated[int | None, typer.Option("--hybrid-depth", help="Candidates taken from each ranking before fusing [default: 100].", show_default=False)]


QdrantTarget = Annotated[str | None, typer.Option("--qdrant", help="A Qdrant server's URL (http://host:6333), or a folder for Qdrant's local mode.", show_default=False)]
QdrantCollection = Annotated[str | None, typer.Option("--collection", help="The Qdrant collection.", show_default=False)]
QdrantStorage = Annotated[str, typer.Option("--qdrant-storage", help="Token vectors in Qdrant: float16, or int8 (scalar quantisation).")]
NoMuvera = Annotated[bool, typer.Option("--no-muvera", help="No MUVERA first-stage vector: every search scores every point by MaxSim.")]


def _hybrid(hybrid: bool, fusion: str | None, weight: float | None, rrf_k: int | None, depth: int | None):
    """The hybrid settings the options ask for (None: plain MaxSim)."""
    from maxsim.fusion import hybrid_settings

    given = {name: value for name, value in (("fusion", fusion), ("weight", weight), ("rrf_k", rrf_k),
                                             ("depth", depth)) if value is not None}
    if not hybrid and not given:
        return None
    return hybrid_settings(given)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _one_line_errors():
    """Turn the errors a user can fix (every :class:`~maxsim.errors.MaxsimError`: bad input, a bad
    setting, a locked output, a folder in the way) and the system's own (a full disk, a missing
    permission) into one ``error: ...`` line and exit status 2. Anything else is a bug and keeps
    its traceback."""
    from maxsim.errors import MaxsimError
    from maxsim.files import no_space_message

    try:
        yield
    except MaxsimError as err:
        _fail(str(err))
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _fail(no_space_message(err) or f"{where}{err.strerror or err}")


@app.callback()
def _root() -> None:
    """maxsim: prepare data, train, index, search and evaluate ColBERT retrievers."""


@app.command()
@with_options(
    parameter("inputs", Annotated[list[Path], typer.Argument(help="Files (.jsonl, .csv, .tsv, .parquet) of pairs, labelled pairs or triplets, and/or BEIR folders.", show_default=False, metavar="INPUT")], positional=True),
    parameter("output", Annotated[Path, typer.Option(help="Training-data folder to write (queries.jsonl, corpus.jsonl, triples.jsonl, manifest.json).")]),
    parameter("corpus", Annotated[list[Path] | None, typer.Option(help="Extra documents (a corpus.jsonl, a table with a 'text' column, or a BEIR folder), only candidates for negatives. Repeatable.", metavar="<path>")], None),
    parameter("queries", Annotated[Path | None, typer.Option(help="colbert-ai's queries.tsv, for inputs that are colbert-ai triples ([qid, pid, ...] or [qid, [pid, score], ...] lines).")], None),
    parameter("collection", Annotated[Path | None, typer.Option(help="colbert-ai's collection.tsv, for inputs that are colbert-ai triples.")], None),
    parameter("device", Device, "auto"),
    *options_from(PrepareSettings, flags={"positive_labels": "positive_label", "negative_labels": "negative_label"}),
)
def prepare(inputs: list[Path], output: Path, corpus: list[Path] | None, queries: Path | None,
            collection: Path | None, device: str, **settings) -> None:
    """Turn pairs, labelled pairs, triplets or a BEIR folder into a checked training folder."""
    from maxsim.data.prepare import prepare_training_data

    _quiet_libraries()
    with _one_line_errors():
        options = PrepareSettings.checked(**{k: v for k, v in settings.items() if v is not None}).model_dump()
        manifest = prepare_training_data(list(inputs), output, corpus=list(corpus or []), colbert_queries=queries,
                                         colbert_collection=collection, device=device, **options)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # (under torchrun rank 0 writes and reports)
    counts = manifest["counts"]
    typer.echo(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()), err=True)
    for what, section in (("dropped", manifest["dropped"]), ("merged", manifest["merged"])):
        if section:
            typer.echo(f"{what}: " + ", ".join(f"{v} {k}" for k, v in section.items()), err=True)
    for note in manifest["mining"]["notes"]:
        typer.echo(f"note: {note}", err=True)
    typer.echo(str(output))


#: flags whose name is not the field's (RAGatouille's and the README's spelling)
TRAIN_FLAGS = {"use_ib_negatives": "ib_negatives"}


@app.command()
@with_options(
    *options_from(TrainConfig, flags=TRAIN_FLAGS),
    parameter("config", Annotated[Path | None, typer.Option(help="A config.yaml from an earlier run; flags given here override it.")], None),
    parameter("resume", Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in --output, with the run's saved settings (OUTPUT/config.yaml); a flag that would change what is trained is refused.")], False),
)
def train(config: Path | None, resume: bool, **values) -> None:
    """Train a ColBERT model; the last line printed is the checkpoint to use (best/ with a dev set)."""
    from maxsim.training import Trainer

    output = values.get("output")
    if config is None and resume and output is not None and (output / "config.yaml").is_file():
        config = output / "config.yaml"  # a resume continues the run as it was set up
    try:
        if config is not None:
            if not config.is_file():
                _fail(f"--config {config}: file not found")
            cfg = TrainConfig.from_yaml(config, **values)
        else:
            if values.get("data") is None or output is None:
                _fail("--data and --output are required (or --config FILE)")
            cfg = TrainConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        _fail(f"invalid settings: {validation_message(err)}")
    _quiet_libraries()
    with _one_line_errors():
        path = Trainer(cfg).train(resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(path))


@app.command()
def score(
    data: Annotated[Path, typer.Argument(help="Training-data folder (queries.jsonl, corpus.jsonl, triples.jsonl).", show_default=False)],
    teacher: Annotated[str, typer.Option(help="bm25, a ColBERT checkpoint (maxsim, colbert-ai or PyLate format) or a Hugging Face sequence-classification cross-encoder (its relevance logit).")],
    output: Annotated[Path, typer.Option(help="New training folder: the same queries and corpus, triples.jsonl with \"scores\".")],
    candidates: Annotated[int | None, typer.Option(help="Score the teacher's top N of the corpus (BM25's for a cross-encoder), known positives always included [default: each line's own positives and negatives].")] = None,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 32,
    device: Device = "auto",
    chunk_lines: Annotated[int, typer.Option(min=1, help="Lines scored and written at a time (the unit a resume keeps, and that torchrun's ranks share out).")] = 64,
) -> None:
    """Score a training folder with a teacher, for distillation; prints the new folder.

    Scores are written in chunks as they are computed: run the same command again after a kill
    and it goes on where it stopped. Under torchrun the ranks share the chunks out, each on its
    own device, and the folder is the same as one process writes.
    """
    from maxsim.data.teacher import score_training_folder

    _quiet_libraries()
    with _one_line_errors():
        score_training_folder(data, teacher, output, candidates, batch_size, chunk_lines, device=device)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(output))


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.")],
    model: Annotated[str | None, typer.Option(help="A maxsim checkpoint folder, a base model folder, 'base' (the untrained bundled MiniLM) or 'bm25' (the BM25 baseline) [default: with --index, the model that built it].")] = None,
    index: Annotated[Path | None, typer.Option(help="Search through this index (made by maxsim index from the same corpus) instead of exact MaxSim over every document.")] = None,
    split: Annotated[str, typer.Option(help="qrels split to evaluate.")] = "test",
    output: Annotated[Path | None, typer.Option(help="Folder for run.trec and metrics.json.")] = None,
    k: Annotated[int, typer.Option(help="Documents retrieved per query.")] = 100,
    drop_self_hits: Annotated[bool, typer.Option("--drop-self-hits", help="Remove a document whose id equals the query id (ArguAna-style sets).")] = False,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse qrels that name documents the corpus lacks [default: warn, and count them as relevant and unretrievable, as BEIR does].")] = False,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="With --index and --model: search the index with a model other than the one that built it.")] = False,
    device: Device = "auto",
    hybrid: HybridFlag = False,
    fusion: Fusion = None,
    fusion_weight: FusionWeight = None,
    rrf_k: RrfK = None,
    hybrid_depth: HybridDepth = None,
) -> None:
    """nDCG@10, MRR@10, Recall@100 and MAP (pytrec_eval) of exact MaxSim, an index (plain or --hybrid) or BM25 on a BEIR split.

    The last line printed is the metrics as one JSON object.
    """
    import json

    from maxsim.evaluation import evaluate_beir, write_trec_run
    from maxsim.files import atomic_write_text
    from maxsim.index import read_settings

    if model is None and index is None:
        _fail("give --model (a checkpoint, 'base' or 'bm25') or --index")
    if k < 1:
        _fail(f"--k must be 1 or more, got {k}")
    if output is not None and output.exists() and not output.is_dir():
        _fail(f"--output {output} is a file: choose a folder for run.trec and metrics.json")
    _quiet_libraries()
    with _one_line_errors():
        settings = _hybrid(hybrid, fusion, fusion_weight, rrf_k, hybrid_depth)
        if settings is not None and index is None:
            _fail("--hybrid searches an index: give --index (built by maxsim index, which keeps a BM25 side)")
        metrics, run = evaluate_beir(model, data, split, k, drop_self_hits, batch_size, progress=True, index=index,
                                     strict=strict, trec_output=output is not None,
                                     allow_model_mismatch=allow_model_mismatch, device=device, hybrid=settings)
    result = {"model": model, "data": str(data), "split": split, **{k_: round(v, 4) for k_, v in metrics.items()}}
    if settings is not None:
        result["hybrid"] = settings.model_dump()
    if index is not None:
        result["index"] = str(index)
        if model is None:
            result["model"] = read_settings(index).model_path
    if output is not None:
        with _one_line_errors():
            write_trec_run(run, output / "run.trec", tag="bm25" if model == "bm25" else "maxsim")
            atomic_write_text(output / "metrics.json", json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result))


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="A model: a maxsim, Stanford (colbert-ai) or PyLate checkpoint folder, or a hub name.", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="pylate (loads as pylate.models.ColBERT), stanford (colbert-ai's Checkpoint, RAGatouille) or maxsim.")],
    output: Annotated[Path, typer.Option(help="Folder to write (new or empty, or a model of that format to replace).")],
) -> None:
    """Write a checkpoint in another library's format; prints the folder.

    A model that library would encode differently (a tokenizer without [CLS], say) is refused
    with the reason, rather than written wrong.
    """
    from maxsim.model import ColBERT
    from maxsim.model.card import load_training

    _quiet_libraries()
    with _one_line_errors():
        model = ColBERT.from_pretrained(None if checkpoint == "base" else checkpoint)
        source = None if checkpoint == "base" else Path(checkpoint)
        model.save(output, format=format, training=load_training(source) if source and source.is_dir() else None)
    typer.echo(str(output))


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="A model folder with its model card: best/, a checkpoint, or what maxsim export wrote.", show_default=False)],
    repo: Annotated[str, typer.Option(help="Hub repository, USER/NAME (made if it does not exist).", show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Make a new repository private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to push to (made if new) [default: main].")] = None,
) -> None:
    """Upload a model folder to the Hugging Face hub; prints the commit's URL.

    The token comes from HF_TOKEN or the huggingface_hub login. A checkpoint's training state
    (optimizer, position, settings for a resume) is not uploaded."""
    from maxsim.model.hub import push as push_folder

    with _one_line_errors():
        typer.echo(push_folder(folder, repo, private=private, revision=revision))


@app.command("index")
def build_index(
    corpus: Annotated[Path | None, typer.Argument(help="A corpus.jsonl (_id, title, text) or a BEIR folder.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="maxsim checkpoint folder (or 'base' for the untrained bundled MiniLM).")] = None,
    output: Annotated[Path | None, typer.Option(help="Index folder to write.")] = None,
    nbits: Annotated[int, typer.Option(help="Bits per dimension of each residual: 1, 2 or 4.")] = 2,
    max_document_tokens: Annotated[int | None, typer.Option(help="Split documents into chunks of at most this many tokens [default: the model's doc_maxlen].")] = None,
    no_split: Annotated[bool, typer.Option("--no-split", help="Truncate long documents instead of splitting them.")] = False,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the index already in --output (a folder holding anything else is never replaced).")] = False,
    device: Device = "auto",
    pool_factor: Annotated[int, typer.Option("--pool-factor", min=1, help="Token pooling: store about 1/N of each chunk's vectors, clustered and mean-pooled (as PyLate's pool_factor; 1: none).")] = 1,
    compact: Annotated[Path | None, typer.Option("--compact", help="Instead of building: merge every segment of this index into one, without its deleted documents (every file is checked first).", show_default=False)] = None,
    verify: Annotated[Path | None, typer.Option("--verify", help="Instead of building: check every byte of this index (sha256 and values); exit 1 if anything is wrong.", show_default=False)] = None,
    language: Annotated[str, typer.Option(help="Language of the BM25 side kept for hybrid search (its stop words and stemmer; ISO 639-1: en, fr, de, ...).")] = "en",
    no_bm25: Annotated[bool, typer.Option("--no-bm25", help="Keep no BM25 side (no hybrid search).")] = False,
    add_bm25: Annotated[Path | None, typer.Option("--add-bm25", help="Instead of building: give this index (built without one, or by an older maxsim) its BM25 side in --language, without re-encoding.", show_default=False)] = None,
    qdrant: QdrantTarget = None,
    collection: QdrantCollection = None,
    qdrant_storage: QdrantStorage = "float16",
    no_muvera: NoMuvera = False,
) -> None:
    """Build a compressed (PLAID-style) index of a corpus, with a BM25 side for hybrid search;
    prints the index folder.

    With --compact IX, --verify IX or --add-bm25 IX, work on an index already built instead."""
    if add_bm25 is not None:
        if compact is not None or verify is not None or corpus is not None or model is not None or output is not None:
            _fail("--add-bm25 takes an index folder (and --language) and nothing else")
        from maxsim.index.store import add_bm25 as give_bm25

        with _one_line_errors():
            data = give_bm25(add_bm25, language)
        typer.echo(f"{add_bm25}: BM25 side in {language!r} for {data.n_documents} documents")
        return
    if compact is not None or verify is not None:
        _maintain_index(compact, verify, corpus, model, output)
        return
    if qdrant is not None or collection is not None:
        _index_into_qdrant(corpus, model, output, qdrant, collection, qdrant_storage, no_muvera, overwrite,
                           max_document_tokens, no_split, batch_size, device)
        return
    if corpus is None or model is None or output is None:
        _fail("give a CORPUS, --model and --output to build an index (or --compact IX, or --verify IX)")
    from maxsim import ranks
    from maxsim.data.corpus_file import CorpusFile
    from maxsim.data.errors import DataError
    from maxsim.files import check_replaceable
    from maxsim.index import is_index
    from maxsim.model import pick_device
    from maxsim.retriever import Retriever

    _quiet_libraries()
    path = corpus / "corpus.jsonl" if corpus.is_dir() else corpus
    with _one_line_errors():
        check_replaceable(output, is_index, "maxsim index", overwrite)  # before any work
        if pick_device(device).type == "cuda" and ranks.launched():  # under torchrun: each rank its own GPU
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        docs = CorpusFile(path)  # every line checked now; the texts read shard by shard as they encode
        if not len(docs):
            raise DataError(path, None, "no documents", "give a corpus.jsonl with one {\"_id\", \"text\"} per line")
        retriever = Retriever.from_pretrained(None if model == "base" else model, device=device)
        retriever.index_records(docs, path=output, nbits=nbits, overwrite=overwrite, split_documents=not no_split,
                                max_document_tokens=max_document_tokens, batch_size=batch_size, show_progress=True,
                                pool_factor=pool_factor, bm25_language=None if no_bm25 else language)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(output))


def _index_into_qdrant(corpus, model, output, qdrant, collection, storage, no_muvera, overwrite, max_document_tokens,
                       no_split, batch_size, device) -> None:
    """``maxsim index CORPUS --model M --qdrant URL_OR_PATH --collection NAME``."""
    from maxsim.data.corpus_file import CorpusFile
    from maxsim.retriever import Retriever

    if corpus is None or model is None or qdrant is None or collection is None or output is not None:
        _fail("into Qdrant: give a CORPUS, --model, --qdrant URL_OR_PATH and --collection NAME (and no --output)")
    _quiet_libraries()
    path = corpus / "corpus.jsonl" if corpus.is_dir() else corpus
    with _one_line_errors():
        docs = CorpusFile(path)
        retriever = Retriever.from_pretrained(None if model == "base" else model, device=device)
        done = retriever.index_to_qdrant(docs, qdrant, collection, storage=storage, first_stage=not no_muvera,
                                         split_documents=not no_split, max_document_tokens=max_document_tokens,
                                         batch_size=batch_size, overwrite=overwrite, show_progress=True)
        typer.echo(f"{qdrant} {collection}: {done.document_count()} documents")


@app.command("export-index")
def export_index(
    index: Annotated[Path, typer.Argument(help="Index folder made by maxsim index.", show_default=False)],
    qdrant: QdrantTarget = None,
    collection: QdrantCollection = None,
    qdrant_storage: QdrantStorage = "float16",
    no_muvera: NoMuvera = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a collection of that name.")] = False,
) -> None:
    """Copy an index into a Qdrant collection (its stored vectors; nothing is encoded again)."""
    from maxsim.index import IndexData
    from maxsim.qdrant import export_index as export

    if qdrant is None or collection is None:
        _fail("give --qdrant URL_OR_PATH and --collection NAME")
    _quiet_libraries()
    with _one_line_errors():
        done = export(IndexData.load(index), qdrant, collection, storage=qdrant_storage, first_stage=not no_muvera,
                      overwrite=overwrite, show_progress=True)
        typer.echo(f"{qdrant} {collection}: {done.count()} documents")


def _maintain_index(compact: Path | None, verify: Path | None, corpus, model, output) -> None:
    """``maxsim index --compact IX`` / ``--verify IX``."""
    from maxsim.index import compact_index
    from maxsim.index.compaction import verify_index

    if (compact is not None and verify is not None) or corpus is not None or model is not None or output is not None:
        _fail("--compact and --verify take an index folder and nothing else: give one of them alone")
    with _one_line_errors():
        if compact is not None:
            before, after = compact_index(compact)
            typer.echo(f"{compact}: {before['documents']} documents, {before['segments']} segments "
                       f"({before['chunks']} chunks stored) -> {len(after.segments)} segment ({after.n_chunks} chunks)")
            return
        problems = verify_index(verify)
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{verify}: every file checked, no problem found")


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="One or more query texts.", show_default=False)],
    index: Annotated[Path, typer.Option(help="Index folder made by maxsim index.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Hits per query.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of hits (a list of lists for several queries).")] = False,
    ncells: Annotated[int | None, typer.Option(help="Centroids probed per query token [default: size-aware].")] = None,
    centroid_score_threshold: Annotated[float | None, typer.Option(help="Centroids scoring under this are ignored in the first ranking.")] = None,
    ndocs: Annotated[int | None, typer.Option(help="Chunks decompressed and scored exactly [default: size-aware].")] = None,
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Search even if the index's model folder now holds another model (its weights changed since indexing).")] = False,
    where: Annotated[list[str] | None, typer.Option("--where", help="Return only documents where this holds: FIELD=VALUE, FIELD!=VALUE, FIELD>=VALUE (also >, <=, <), 'FIELD in A,B' or a JSON filter object; FIELD is a metadata field (dotted for nested ones) or id. Repeat to require several.", show_default=False)] = None,
    hybrid: HybridFlag = False,
    fusion: Fusion = None,
    fusion_weight: FusionWeight = None,
    rrf_k: RrfK = None,
    hybrid_depth: HybridDepth = None,
) -> None:
    """Search an index; prints the hits (document_id, score, rank, content, metadata; with
    --hybrid, the fused score and both components, maxsim_score and bm25_score)."""
    import json

    from maxsim.index.filters import parse_where
    from maxsim.limits import check_query
    from maxsim.retriever import Retriever

    if k < 1:
        _fail(f"-k must be 1 or more, got {k}")
    _quiet_libraries()
    with _one_line_errors():
        for i, query in enumerate(queries, start=1):
            check_query(query, f"query {i}")  # (bytes that are not UTF-8 come as lone surrogates)
        condition = parse_where(where) if where else None
        settings = _hybrid(hybrid, fusion, fusion_weight, rrf_k, hybrid_depth)
        retriever = Retriever.from_index(index, allow_model_mismatch=allow_model_mismatch)
        results = retriever.search(list(queries), k=k, ncells=ncells, centroid_score_threshold=centroid_score_threshold,
                                   ndocs=ndocs, filter=condition, hybrid=settings)
    if as_json:
        payload = [[h.to_dict() for h in hits] for hits in results]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload, ensure_ascii=False))
        return
    for query, hits in zip(queries, results):
        typer.echo(f"# {query}")
        for h in hits:
            content = h.content if len(h.content) <= 100 else h.content[:97] + "..."
            parts = f"  (maxsim {h.maxsim_score:.4f}, bm25 {h.bm25_score:.4f})" if h.bm25_score is not None else ""
            typer.echo(f"{h.rank:3d}  {h.score:8.4f}  {h.document_id}  {content}{parts}")


@app.command()
def serve(
    index: Annotated[Path | None, typer.Option(help="Index folder made by maxsim index.", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key_file: Annotated[Path | None, typer.Option(help="File holding the API key (readable by its owner only: chmod 600): every route but /health and /ready then needs Authorization: Bearer <key>.")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse writes (POST and DELETE /documents), so that several servers can share the index.")] = False,
    workers: Annotated[int, typer.Option(help="Worker processes (each holds the model and the index; writes take the index's writer lock).")] = 1,
    qdrant: QdrantTarget = None,
    collection: QdrantCollection = None,
) -> None:
    """Serve an index (or a Qdrant collection) over HTTP: /search, /documents, /health, /ready, /metrics, docs at /docs."""
    import uvicorn

    from maxsim.retriever import Retriever
    from maxsim.serve import create_app, keep_freed_memory, load_retriever, writer_lock

    _quiet_libraries()
    keep_freed_memory()
    with contextlib.ExitStack() as held:
        with _one_line_errors():
            key = api_key_file.read_text().strip() if api_key_file is not None else None
            if api_key_file is not None and not key:
                _fail(f"--api-key-file {api_key_file} is empty")
            if api_key_file is not None:
                _warn_if_others_can_read(api_key_file)
            if workers < 1:
                _fail(f"--workers must be 1 or more, got {workers}")
            if (index is None) == (qdrant is None and collection is None):
                _fail("give --index DIR, or --qdrant URL_OR_PATH with --collection NAME")
            if qdrant is not None or collection is not None:
                if qdrant is None or collection is None or workers > 1:
                    _fail("--qdrant needs --collection, and serves with one worker (Qdrant shards the load)")
                uvicorn.run(create_app(Retriever.from_qdrant(qdrant, collection), api_key=key, read_only=read_only),
                            host=host, port=port, log_level="info")
                return
            if not read_only:
                held.enter_context(writer_lock(index))
            if workers > 1:  # each worker builds its own app (uvicorn needs an import string)
                from maxsim.serve import ENV_API_KEY, ENV_INDEX, ENV_READ_ONLY

                Retriever.from_index(index)  # a bad index is one error line here, not one per worker
                os.environ.update({ENV_INDEX: str(index.resolve()), ENV_API_KEY: key or "",
                                   ENV_READ_ONLY: "1" if read_only else "0"})
            else:
                application = create_app(load_retriever(index), api_key=key, read_only=read_only)
        if workers > 1:
            uvicorn.run("maxsim.serve:app_from_environment", factory=True, workers=workers, host=host, port=port,
                        log_level="info")
        else:
            uvicorn.run(application, host=host, port=port, log_level="info")


def _warn_if_others_can_read(path: Path) -> None:
    """Warn, as ssh does of a private key, when users other than the owner may read a secret."""
    import stat

    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        typer.echo(f"warning: --api-key-file {path} can be read by other users (mode {mode:04o}): anyone on this "
                   f"machine can use the key. Fix: chmod 600 {path}", err=True)


def _quiet_libraries() -> None:
    """Show maxsim's own progress; hide Hugging Face's per-file progress bars."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for handler in logging.getLogger().handlers:  # (bm25s sets its own logger to DEBUG when imported)
        handler.addFilter(lambda record: not record.name.startswith("bm25s") or record.levelno >= logging.WARNING)
    hf_logging.set_verbosity_error()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
