"""``maxsim search``: an index searched from the shell (repeated queries belong in Python or ``maxsim serve``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from maxsim.cli import common
from maxsim.cli.common import app, fail, hybrid_from, one_line_errors, quiet_libraries
from maxsim.inputs import DEFAULT_K

logger = logging.getLogger("maxsim")


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="One or more query texts.", show_default=False)],
    index: Annotated[Path, typer.Option(help="Index folder made by maxsim index.")],
    k: common.K = DEFAULT_K,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of hits (a list of lists for several queries).")] = False,
    ncells: common.Ncells = None,
    centroid_score_threshold: common.CentroidScoreThreshold = None,
    ndocs: common.Ndocs = None,
    query_precision: common.QueryPrecision = "auto",
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Search even if the index's model folder now holds another model (its weights changed since indexing).")] = False,
    where: Annotated[list[str] | None, typer.Option("--where", help="Return only documents where this holds: FIELD=VALUE, FIELD!=VALUE, FIELD>=VALUE (also >, <=, <), 'FIELD in A,B' or a JSON filter object; FIELD is a metadata field (dotted for nested ones) or id. Repeat to require several.", show_default=False)] = None,
    hybrid: common.HybridFlag = None,
    fusion: common.Fusion = None,
    fusion_weight: common.FusionWeight = None,
    rrf_k: common.RrfK = None,
    hybrid_depth: common.HybridDepth = None,
) -> None:
    """Search an index; prints the hits (document_id, score, rank, content, metadata; with
    --hybrid, the fused score and both components, maxsim_score and bm25_score)."""
    import json

    from maxsim.index.filters import parse_where
    from maxsim.limits import check_query
    from maxsim.retriever import Retriever

    if k < 1:
        fail(f"-k must be 1 or more, got {k}")
    quiet_libraries()
    with one_line_errors():
        for i, query in enumerate(queries, start=1):
            check_query(query, f"query {i}")  # (bytes that are not UTF-8 come as lone surrogates)
        condition = parse_where(where) if where else None
        settings = hybrid_from(hybrid, fusion, fusion_weight, rrf_k, hybrid_depth)
        retriever = Retriever.from_index(index, allow_model_mismatch=allow_model_mismatch)
        retriever.encoder.query_precision = query_precision
        retriever.encoder.trace_queries = False  # these queries are all this process encodes
        logger.info("%s", retriever.search_config(settings).line())
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
