"""Model cards: every best/, every checkpoint and every export has a README.md in the hub's format."""

import json

import yaml
from conftest import make_training_folder
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.model.card import Training, load_training, model_card
from maxsim.model.settings import ColBERTSettings
from maxsim.training import TrainConfig, Trainer


def _header_and_body(text):
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_a_card_has_the_hubs_header_and_every_section():
    settings = ColBERTSettings(dim=96, query_maxlen=32, doc_maxlen=180, base_model="sentence-transformers/minilm")
    training = Training(step=40, best=True, metric="ndcg@10", dev_metrics={"ndcg@10": 0.7123, "recall@100": 0.9},
                        curve=[{"step": 0, "dev_ndcg@10": 0.6}, {"step": 40, "dev_ndcg@10": 0.7123}],
                        settings={"learning_rate": 3e-5, "data": "runs/x"},
                        manifest={"counts": {"queries": 809, "triples": 4045}, "mining": {
                            "method": "bm25", "window_requested": [10, 100]}})
    header, body = _header_and_body(model_card(settings, "pylate", training))
    assert header["library_name"] == "PyLate" and header["base_model"] == "sentence-transformers/minilm"
    assert {"ColBERT", "late-interaction"} <= set(header["tags"]) and header["pipeline_tag"] == "sentence-similarity"
    metrics = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"ndcg@10": 0.7123, "recall@100": 0.9}
    assert "step 40 (chosen on the dev set by ndcg@10)" in body and "96-dimensional" in body
    assert "- queries: 809" in body and "- triples: 4,045" in body and "bm25, ranks 10 to 100" in body
    assert "| 0 | 0.6000 |" in body and "| 40 | 0.7123 |" in body  # the dev curve
    assert "learning_rate: 3.0e-05" in body and '"doc_maxlen": 180' in body  # every setting
    assert "models.ColBERT(" in body  # this folder's own library first
    assert "--format maxsim" in body and "--format stanford" in body and "Checkpoint(" in body
    from maxsim.model import default_base_model

    bundled, _ = _header_and_body(model_card(ColBERTSettings(base_model=str(default_base_model()))))
    assert bundled["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    plain_header, plain_body = _header_and_body(model_card(ColBERTSettings()))
    assert "model-index" not in plain_header and "base_model" not in plain_header and "Trained" not in plain_body


def test_training_writes_cards_and_export_carries_them(tiny_model_dir, tmp_path):
    data = make_training_folder(tmp_path / "data")
    manifest = {"counts": {"queries": 12, "documents": 30, "triples": 12}, "mining": {"method": "bm25"}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    cfg = TrainConfig(data=data, output=tmp_path / "run", base_model=str(tiny_model_dir), dim=16, query_maxlen=12,
                      doc_maxlen=24, batch_size=4, learning_rate=1e-3, progress_bar=False, seed=5, epochs=2,
                      dev_fraction=0.25, eval_every=3, save_every=3)
    best = Trainer(cfg).train()
    info = json.loads((best / "best.json").read_text())
    header, body = _header_and_body((best / "README.md").read_text())
    assert header["library_name"] == "maxsim" and "base_model" not in header  # a local folder: no hub name
    assert f"Encoder: `{tiny_model_dir.name}` (a local folder)" in body
    assert str(tmp_path) not in body and str(tiny_model_dir) not in body  # nothing of this machine is published
    assert "sentence-transformers" not in header["tags"]  # it cannot load this folder
    metrics = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {k: round(v, 4) for k, v in info["metrics"].items()}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dev_steps = [r["step"] for r in rows if "dev_ndcg@10" in r and r["step"] <= info["step"]]
    assert load_training(best).step == info["step"] and [r["step"] for r in load_training(best).curve] == dev_steps
    assert "- queries: 12" in body and f"from step {info['step']}" in body
    for checkpoint in (tmp_path / "run" / "checkpoints").iterdir():
        _, checkpoint_body = _header_and_body((checkpoint / "README.md").read_text())
        assert f"step {checkpoint.name.removeprefix('step-')} (a checkpoint of the run, not chosen on a dev set)" in checkpoint_body
    result = CliRunner().invoke(app, ["export", str(best), "--format", "pylate", "--output", str(tmp_path / "pl")])
    assert result.exit_code == 0, result.output
    exported_header, exported_body = _header_and_body((tmp_path / "pl" / "README.md").read_text())
    assert exported_header["library_name"] == "PyLate" and exported_header["model-index"] == header["model-index"]
    assert "- queries: 12" in exported_body and "models.ColBERT(" in exported_body


class _FakeApi:
    """Records what push asks of the hub (the hub itself cannot be reached from these machines)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo, **kw):
        self.calls.append(("create_repo", repo, kw))

    def create_branch(self, repo, **kw):
        self.calls.append(("create_branch", repo, kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw["repo_id"], kw))
        return type("Info", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()


def _saved_checkpoint(tmp_path, tiny_model_dir):
    from maxsim.model import ColBERT

    model = ColBERT.from_pretrained(str(tiny_model_dir), dim=16)
    folder = model.save(tmp_path / "model", training=Training(step=7, metric="ndcg@10", dev_metrics={"ndcg@10": 0.5}))
    (folder / "trainer_state.pt").write_bytes(b"optimizer")  # as in a checkpoint: never uploaded
    (folder / "training_state.json").write_text("{}")
    (folder / ".hidden").write_text("x")
    return folder


def test_push_uploads_the_model_and_its_card_only(tmp_path, tiny_model_dir):
    from maxsim.model.hub import files_to_upload, push

    folder = _saved_checkpoint(tmp_path, tiny_model_dir)
    files = files_to_upload(folder)
    assert "README.md" in files and "maxsim_training.json" in files and "model.safetensors" in files
    assert not {"trainer_state.pt", "training_state.json", ".hidden"} & set(files)
    api = _FakeApi()
    url = push(folder, "someone/my-colbert", private=True, revision="v1", token="hf_x", api=api)
    assert url == "https://huggingface.co/someone/my-colbert/commit/abc"
    (_, repo, create), (_, _, branch), (_, _, upload) = api.calls
    assert repo == "someone/my-colbert" and create["private"] is True and branch["branch"] == "v1"
    assert upload["folder_path"] == str(folder) and upload["allow_patterns"] == files and upload["revision"] == "v1"


def test_push_errors_are_one_clear_line(tmp_path, tiny_model_dir, monkeypatch):
    folder = _saved_checkpoint(tmp_path, tiny_model_dir)
    runner = CliRunner()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login
    result = runner.invoke(app, ["push", str(folder), "--repo", "someone/x"])
    assert result.exit_code == 2 and "no hub token" in result.output and "HF_TOKEN" in result.output
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["push", str(folder), "--repo", "someone/x"])
    assert result.exit_code == 2 and "could not push to someone/x" in result.output
    assert "HF_HUB_OFFLINE" in result.output and "Traceback" not in result.output
    assert "not a hub repository name" in runner.invoke(app, ["push", str(folder), "--repo", "no-owner"]).output
    (folder / "README.md").unlink()
    assert "has no README.md" in runner.invoke(app, ["push", str(folder), "--repo", "someone/x"]).output
    assert "holds no model" in runner.invoke(app, ["push", str(tmp_path), "--repo", "someone/x"]).output
