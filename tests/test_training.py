import json

import pytest
import torch
import yaml
from conftest import make_training_folder
from safetensors.torch import load_file
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.training import TrainConfig, Trainer, checkpoints
from maxsim.training import trainer as trainer_module


def _config(tiny_model_dir, data, output, **kw):
    values = dict(data=data, output=output, base_model=str(tiny_model_dir), dim=16, query_maxlen=12,
                  doc_maxlen=24, batch_size=4, learning_rate=1e-3, progress_bar=False, seed=5)
    values.update(kw)
    return TrainConfig(**values)


def _weights(folder):
    state = load_file(str(folder / "model.safetensors"))
    state["projection"] = load_file(str(folder / "projection.safetensors"))["weight"]
    return state


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _rows(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_outputs_are_written(tiny_model_dir, training_folder, tmp_path):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", batch_size=16, epochs=25,
                  learning_rate=3e-3)
    path = Trainer(cfg).train()
    assert path == tmp_path / "run" / "checkpoints" / "step-25"  # no dev set: the last one
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 26))
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    for key in ("epoch", "loss", "loss_positive_term", "loss_logsumexp_term", "lr", "grad_norm",
                "triplets_per_s", "tokens_per_s", "accuracy"):
        assert key in rows[0]
    assert abs(rows[0]["loss_positive_term"] + rows[0]["loss_logsumexp_term"] - rows[0]["loss"]) < 1e-5
    # warmup auto = 10% of 25 steps = 2 steps, then linear decay to zero
    assert rows[1]["lr"] == pytest.approx(3e-3) and rows[-1]["lr"] == 0.0
    assert (tmp_path / "run" / "training.png").stat().st_size > 1000
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert TrainConfig(**saved) == cfg


def kill_then_resume(tiny_model_dir, training_folder, tmp_path, monkeypatch, **kw):
    """Train uninterrupted into a/, and into b/ with a death right after step-6 is on disk,
    then resume b/. Returns (a's last checkpoint, b's resumed last checkpoint)."""
    kw = dict(epochs=2, save_every=2, keep_checkpoints=10, **kw)  # 16 examples / 4 = 4 steps an epoch
    whole = Trainer(_config(tiny_model_dir, training_folder, tmp_path / "a", **kw)).train()
    real_save = checkpoints.save_checkpoint

    def save_then_die(output, model, optimizer, scheduler, position, keep):
        path = real_save(output, model, optimizer, scheduler, position, keep)
        if position.step == 6:
            raise KeyboardInterrupt  # the process dies right after step-6 is on disk
        return path

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_die)
    cfg_b = _config(tiny_model_dir, training_folder, tmp_path / "b", **kw)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg_b).train()
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    assert checkpoints.latest_checkpoint(tmp_path / "b").name == "step-6"
    # a half-written checkpoint from the dying process must not count as complete
    (tmp_path / "b" / "checkpoints" / ".tmp-step-8-x").mkdir()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(cfg_b).train()
    resumed = Trainer(cfg_b).train(resume=True)
    assert resumed.name == whole.name == "step-8"
    assert not list((tmp_path / "b" / "checkpoints").glob(".tmp-*"))
    return whole, resumed


def test_kill_after_checkpoint_then_resume_matches_uninterrupted(
        tiny_model_dir, training_folder, tmp_path, monkeypatch):
    whole, resumed = kill_then_resume(tiny_model_dir, training_folder, tmp_path, monkeypatch)
    assert _max_diff(_weights(whole), _weights(resumed)) <= 1e-6
    # the metrics log has each step once, and the same losses
    rows_a, rows_b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [r["step"] for r in rows_b] == list(range(1, 9))
    for ra, rb in zip(rows_a, rows_b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)


def test_best_checkpoint_is_the_step_with_the_best_dev_metric(
        tiny_model_dir, training_folder, tmp_path, monkeypatch):
    scripted = iter([0.30, 0.55, 0.41, 0.50, 0.2, 0.1])

    def fake_eval(qrels, run, metrics):
        value = next(scripted)
        return {"ndcg@10": value, "mrr@10": value / 2}

    monkeypatch.setattr(trainer_module, "evaluate_run", fake_eval)
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", epochs=4, dev_fraction=0.25,
                  eval_every=2, save_every=2, keep_checkpoints=2)
    # 12 training queries / 4 = 3 steps an epoch, 12 steps: evaluations at 2, 4, 6, ...
    path = Trainer(cfg).train()
    assert path == tmp_path / "run" / "best"
    info = json.loads((path / "best.json").read_text())
    assert info["step"] == 4 and info["value"] == 0.55
    # only the newest 2 checkpoints are kept; best/ holds step 4's weights
    assert [p.name for _, p in checkpoints.list_checkpoints(tmp_path / "run")] == ["step-10", "step-12"]
    rows = {r["step"]: r for r in _rows(tmp_path / "run")}
    assert rows[4]["dev_ndcg@10"] == 0.55 and "dev_ndcg@10" not in rows[3]


def test_real_dev_evaluation_and_best_weights(tiny_model_dir, training_folder, tmp_path):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", epochs=2, dev_fraction=0.25,
                  eval_every=3, save_every=3, keep_checkpoints=5)
    path = Trainer(cfg).train()
    info = json.loads((path / "best.json").read_text())
    evals = {r["step"]: r["dev_ndcg@10"] for r in _rows(tmp_path / "run") if "dev_ndcg@10" in r}
    assert sorted(evals) == [3, 6]
    best_step = max(evals, key=lambda s: (evals[s], -s))
    assert info["step"] == best_step and 0.0 < info["value"] <= 1.0
    assert _max_diff(_weights(path), _weights(tmp_path / "run" / "checkpoints" / f"step-{best_step}")) == 0


def test_data_set_smaller_than_one_batch(tiny_model_dir, tmp_path):
    data = make_training_folder(tmp_path / "data", n_topics=3)
    cfg = _config(tiny_model_dir, data, tmp_path / "run", batch_size=32, epochs=2)
    path = Trainer(cfg).train()
    assert path.name == "step-2"
    assert [r["step"] for r in _rows(tmp_path / "run")] == [1, 2]


def test_nway_three_without_in_batch_negatives(tiny_model_dir, training_folder, tmp_path):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", nway=3, use_ib_negatives=False,
                  max_steps=2, temperature=0.05)
    Trainer(cfg).train()
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _rows(tmp_path / "run"))


def test_cli_train_prints_checkpoint_last(tiny_model_dir, training_folder, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--data", str(training_folder), "--output", str(out), "--base-model",
            str(tiny_model_dir), "--dim", "16", "--max-steps", "2", "--batch-size", "8",
            "--doc-maxlen", "24", "--query-maxlen", "12", "--no-progress-bar"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out / "checkpoints" / "step-2")
    # the saved config repeats the run
    again = runner.invoke(app, ["train", "--config", str(out / "config.yaml"), "--output",
                                str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert _max_diff(_weights(out / "checkpoints" / "step-2"),
                     _weights(tmp_path / "again" / "checkpoints" / "step-2")) == 0


def test_cli_bad_input_is_one_clear_line(tiny_model_dir, training_folder, tmp_path):
    (training_folder / "triples.jsonl").write_text('{"query_id": "q0"}\n')
    result = CliRunner().invoke(app, ["train", "--data", str(training_folder), "--output",
                                      str(tmp_path / "r"), "--base-model", str(tiny_model_dir)])
    assert result.exit_code == 2
    assert f"{training_folder / 'triples.jsonl'}:1: missing field" in result.output
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["train", "--data", str(training_folder / "nope"),
                                       "--output", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "training-data folder not found" in missing.output


def test_cli_help_explains_every_flag():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--data", "--output", "--base-model", "--config", "--max-steps", "--epochs",
                 "--batch-size", "--learning-rate", "--nway", "--doc-maxlen", "--query-maxlen",
                 "--dim", "--save-every", "--eval-every", "--dev-fraction", "--seed", "--resume"):
        assert flag in result.output
