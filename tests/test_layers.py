"""The import rule: imports only point down, through layers a newcomer can name, and no circle.

Checked twice: by reading every ``import`` in the source (those inside functions too), and by
importing each module alone in a fresh process and looking at which maxsim modules came with it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maxsim"

#: bottom to top; a module may import its own layer and those below, never those above
LAYERS = [
    ("text, ids, files and errors", ["maxsim.errors", "maxsim.ids", "maxsim.limits", "maxsim.files", "maxsim.progress", "maxsim.lexical", "maxsim.process_group", "maxsim.inputs", "maxsim.lazy",
                                       "maxsim.background", "maxsim.durations"]),
    ("model", ["maxsim.model"]),
    ("scoring and losses", ["maxsim.scoring", "maxsim.losses", "maxsim.ranking", "maxsim.fusion", "maxsim.muvera",
                            "maxsim.search_config"]),
    ("index and search", ["maxsim.index", "maxsim.index_settings", "maxsim.exact_search", "maxsim.backends", "maxsim.indexing", "maxsim.in_memory", "maxsim.text_encoder",
                          "maxsim.retriever", "maxsim.qdrant"]),
    ("data and evaluation", ["maxsim.data", "maxsim.evaluation", "maxsim.search_tuning"]),
    ("training", ["maxsim.training"]),
    ("adapters", ["maxsim.cli", "maxsim.ragatouille", "maxsim.serve",
                  "maxsim.__main__", "maxsim"]),
]


def layer_of(module: str) -> int:
    """The layer of a module: that of the longest prefix listed."""
    best, found = -1, None
    for number, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), number
    if found is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return found


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The maxsim modules ``name`` imports anywhere in its source."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # "from maxsim.index import search" names a module when maxsim.index.search is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def test_every_import_points_down_or_sideways():
    wrong = [f"{a} (layer '{LAYERS[layer_of(a)][0]}') imports {b} (layer '{LAYERS[layer_of(b)][0]}')"
             for a, targets in graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_no_import_cycle():
    edges = graph()
    # a package's __init__ re-exporting its own modules is how packages work, not a circle
    edges = {a: {b for b in targets if not (a == b.rpartition(".")[0] and (PACKAGE.parent / a.replace(".", "/")).is_dir())}
             for a, targets in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


LOADED = r"""
import importlib, json, os, sys
import numpy, torch, transformers, pydantic  # shared by every child: loaded once, before forking
from transformers import AutoModel, AutoTokenizer
# other libraries' modules too (only maxsim's are checked): each child then loads only maxsim's
for library in ("numba", "fastapi", "uvicorn", "httpx", "langchain_core.retrievers", "safetensors.torch", "typer",
                "huggingface_hub", "qdrant_client", "tqdm", "yaml", "bm25s", "faiss", "scipy.stats", "tokenizers"):
    try:
        importlib.import_module(library)
    except ImportError:
        pass
results = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        importlib.import_module(name)
        os.write(write, json.dumps(sorted(m for m in sys.modules if m == "maxsim" or m.startswith("maxsim."))).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    results[name] = json.loads(b"".join(chunks)) if status == 0 else None
print(json.dumps(results))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_importing_a_module_alone_loads_nothing_above_it():
    names = sorted(set(modules()) - {"maxsim.__main__"})  # (a script: importing it runs the command line)
    done = subprocess.run([sys.executable, "-c", LOADED, *names], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = []
    for name in names:
        assert loaded[name] is not None, f"importing {name} alone failed"
        above = [m for m in loaded[name] if m != "maxsim" and layer_of(m) > layer_of(name)]
        if above:
            wrong.append(f"import {name} loads {', '.join(above)}")
    assert not wrong, "\n".join(wrong)


#: private names of other libraries that have no public equivalent (whether the CPU does bf16)
ALLOWED_PRIVATE = {"torch.cpu._is_amx_tile_supported", "torch.cpu._is_avx512_bf16_supported",
                   # MKL's packed GEMM, as torch's own compiler (inductor) calls it; looked up with
                   # hasattr and checked against the plain forward before use (maxsim.model.inference)
                   "torch.ops.mkl._mkl_linear", "torch.ops.mkl._mkl_reorder_linear_weight"}


def test_no_module_reaches_into_another_modules_private_names():
    wrong = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maxsim"):
                wrong += [f"{name}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) \
                        and ast.unparse(node) not in ALLOWED_PRIVATE:
                    wrong.append(f"{name}:{node.lineno} uses {ast.unparse(node)}")
    assert not wrong, "\n".join(wrong)


#: the modules that search only through a retriever or a backend (maxsim.backends), never the index's own search
THROUGH_THE_DOOR = ["maxsim.serve", "maxsim.evaluation", "maxsim.ragatouille", "maxsim.data.mining", "maxsim.cli",
                    "maxsim.retriever"]


def test_adapters_search_only_through_a_backend():
    found = modules()
    for name, path in found.items():
        if not any(name == door or name.startswith(door + ".") for door in THROUGH_THE_DOOR):
            continue
        reached = imports_of(name, path, set(found))
        assert "maxsim.index.search" not in reached, f"{name} imports maxsim.index.search: search through a backend"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "maxsim.index":
                names = {alias.name for alias in node.names}
                assert not names & {"search", "best_chunks", "chunk_scores", "warp_scores"}, \
                    f"{name} imports the index's search ({sorted(names)}): search through a backend"
