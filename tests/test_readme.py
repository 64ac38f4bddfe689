"""Every code block of the README runs as pasted (```bash and ```python; ```sh blocks install and
are not run), on a small cut of SciFact, with a tiny random BERT standing in for the default base
model and a tiny ColBERT, in the Hugging Face cache, standing in for the hub's
answerdotai/answerai-colbert-small-v1 (no network is used)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
HUB_NAME = "answerdotai/answerai-colbert-small-v1"

pytestmark = pytest.mark.slow


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def small_scifact(folder: Path, n_train: int = 48, n_test: int = 16, extra: int = 120) -> None:
    """SciFact cut to some train and test queries, the documents they judge, and a few others."""
    def qrels(split):
        rows = [line.rstrip("\n").split("\t") for line in (SCIFACT / "qrels" / f"{split}.tsv").open()][1:]
        return rows
    train, test = qrels("train"), qrels("test")
    train_q = list(dict.fromkeys(r[0] for r in train))[:n_train]
    test_q = list(dict.fromkeys(r[0] for r in test))[:n_test]
    judged = {r[1] for r in train if r[0] in train_q} | {r[1] for r in test if r[0] in test_q}
    corpus = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").open()]
    kept = [d for d in corpus if d["_id"] in judged] + [d for d in corpus if d["_id"] not in judged][:extra]
    queries = {json.loads(line)["_id"]: line for line in (SCIFACT / "queries.jsonl").open()}
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in kept))
    (folder / "queries.jsonl").write_text("".join(queries[q] for q in train_q + test_q))
    for split, rows, chosen in (("train", train, train_q), ("test", test, test_q)):
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in rows if r[0] in chosen))


def tiny_bert(folder: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from maxsim.model.checkpoint import bundled_base_model

    tokenizer = AutoTokenizer.from_pretrained(bundled_base_model())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def hub_copy(cache: Path, encoder: Path) -> None:
    """A tiny ColBERT in PyLate's format, laid out as the Hugging Face cache keeps HUB_NAME."""
    from maxsim.model import ColBERT

    repo = cache / ("models--" + HUB_NAME.replace("/", "--"))
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    ColBERT.from_pretrained(encoder, dim=16, seed=1).save(repo / "snapshots" / revision, format="pylate")


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="needs BEIR SciFact beside the repository")
def test_every_readme_block_runs_as_pasted(tmp_path):
    assert len(blocks("bash")) >= 2 and len(blocks("python")) >= 3
    home, work = tmp_path / "home", tmp_path / "work"
    small_scifact(home / "datasets" / "scifact")
    hub_copy(tmp_path / "hub", tiny_bert(tmp_path / "tiny-bert"))
    work.mkdir()
    env = {**os.environ, "MAXSIM_HOME": str(home), "MAXSIM_BASE_MODEL": str(tmp_path / "tiny-bert"),
           "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    shell = f'set -euo pipefail\nmaxsim() {{ "{sys.executable}" -m maxsim "$@"; }}\n'
    for number, block in enumerate(blocks("bash"), start=1):
        done = subprocess.run(["bash", "-c", shell + block], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"README bash block {number} failed:\n{block}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    # the Python blocks one after the other in one interpreter, each in a namespace of its own (as
    # pasted into a fresh session; one process spares loading torch three times)
    runner = ("import sys\nfor number, code in enumerate(sys.argv[1:], start=1):\n"
              "    exec(compile(code, f'README python block {number}', 'exec'), {'__name__': '__main__'})\n")
    done = subprocess.run([sys.executable, "-c", runner, *blocks("python")], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"a README python block failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (work / "runs" / "scifact" / "run" / "best").is_dir() and (work / "runs" / "scifact" / "index").is_dir()
