import json
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import make_training_folder
from safetensors.torch import load_file
from typer.testing import CliRunner

from maxsim.cli import app
from maxsim.training import TrainConfig, Trainer, checkpoints, validation
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

    def save_then_die(output, model, optimizer, scheduler, position, *args):
        path = real_save(output, model, optimizer, scheduler, position, *args)
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


def script_model_metric(monkeypatch, values, mrr_share=1.0):
    """Make the dev evaluations report ``values`` in turn as the model's nDCG@10 (BM25 and the
    fusions keep their real figures)."""
    scripted, real = iter(values), validation.compare

    def scripted_compare(*args, **kwargs):
        comparison = real(*args, **kwargs)
        value = next(scripted)
        comparison.metrics["maxsim"] = {"ndcg@10": value, "mrr@10": value * mrr_share}
        return comparison

    monkeypatch.setattr(validation, "compare", scripted_compare)


def test_best_checkpoint_is_the_step_with_the_best_dev_metric(
        tiny_model_dir, training_folder, tmp_path, monkeypatch):
    # step 0 (the starting model), then 2, 4, ...
    script_model_metric(monkeypatch, [0.25, 0.30, 0.55, 0.41, 0.50, 0.2, 0.1], mrr_share=0.5)
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", epochs=4, dev_fraction=0.25,
                  eval_every=2, save_every=2, keep_checkpoints=2)
    # 12 training queries / 4 = 3 steps an epoch, 12 steps: evaluations at 2, 4, 6, ...
    path = Trainer(cfg).train()
    assert path == tmp_path / "run" / "best"
    info = json.loads((path / "best.json").read_text())
    assert info["step"] == 4 and info["value"] == 0.55
    assert info["start_value"] == 0.25 and info["worse_than_start"] is False
    # only the newest 2 checkpoints are kept; best/ holds step 4's weights
    assert [p.name for _, p in checkpoints.list_checkpoints(tmp_path / "run")] == ["step-10", "step-12"]
    rows = {r["step"]: r for r in _rows(tmp_path / "run")}
    assert rows[4]["dev_ndcg@10"] == 0.55 and "dev_ndcg@10" not in rows[3] and rows[0]["dev_ndcg@10"] == 0.25


def test_a_run_whose_best_is_worse_than_its_start_says_so(tiny_model_dir, training_folder, tmp_path, monkeypatch,
                                                          caplog):
    # the starting model, then steps 3 and 6: training made it worse
    script_model_metric(monkeypatch, [0.42, 0.11, 0.09])
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", epochs=2, dev_fraction=0.25, eval_every=3)
    path = Trainer(cfg).train()
    info = json.loads((path / "best.json").read_text())
    assert info["step"] == 3 and info["worse_than_start"] is True
    assert "worse than the model the run started from (0.4200)" in info["warning"]
    assert "worse than the model the run started from" in caplog.text


def test_real_dev_evaluation_and_best_weights(tiny_model_dir, training_folder, tmp_path):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", epochs=2, dev_fraction=0.25,
                  eval_every=3, save_every=3, keep_checkpoints=5)
    path = Trainer(cfg).train()
    info = json.loads((path / "best.json").read_text())
    evals = {r["step"]: r["dev_ndcg@10"] for r in _rows(tmp_path / "run") if "dev_ndcg@10" in r}
    assert sorted(evals) == [0, 3, 6]  # the starting model, then two validations
    best_step = max((s for s in evals if s), key=lambda s: (evals[s], -s))
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
                     _weights(tmp_path / "again" / "checkpoints" / "step-2")) <= 1e-6


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


# ----------------------------------------------------------------------------- nothing lost, nothing silent
def test_max_steps_is_the_number_of_steps_and_repeats_the_data(tiny_model_dir, training_folder, tmp_path):
    # 16 examples, batch 4: 4 steps an epoch; 10 steps need 3 epochs (epochs=1 is the default)
    path = Trainer(_config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=10)).train()
    assert path.name == "step-10"
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert rows[-1]["epoch"] == pytest.approx(2.5) and rows[-1]["lr"] == 0.0
    # --epochs alone is unchanged
    Trainer(_config(tiny_model_dir, training_folder, tmp_path / "two", epochs=2)).train()
    assert [r["step"] for r in _rows(tmp_path / "two")][-1] == 8


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this creates a file: code ran


def test_a_hostile_trainer_state_is_refused_not_run(tiny_model_dir, training_folder, tmp_path):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=4, save_every=2)
    Trainer(cfg).train()
    state_file = tmp_path / "run" / "checkpoints" / "step-4" / checkpoints.STATE_FILE
    state = torch.load(state_file, weights_only=True)  # what maxsim writes loads safely
    state["extra"] = _Payload(tmp_path / "PWNED")
    torch.save(state, state_file)
    with pytest.raises(checkpoints.CheckpointError, match="not loaded"):
        Trainer(cfg).train(resume=True)
    assert not (tmp_path / "PWNED").exists()


def test_resume_refuses_changed_settings_and_allows_harmless_ones(tiny_model_dir, training_folder, tmp_path, caplog):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=4, save_every=2)
    Trainer(cfg).train()
    for change in ({"learning_rate": 1e-3 * 2}, {"batch_size": 8}, {"doc_maxlen": 30}, {"max_steps": 8}):
        with pytest.raises(ValueError, match=f"other settings .*{next(iter(change))}"):
            Trainer(cfg.model_copy(update=change)).train(resume=True)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["learning_rate"] == 1e-3 and saved["batch_size"] == 4  # not rewritten by a refused resume
    caplog.set_level("INFO")
    Trainer(cfg.model_copy(update={"eval_every": 3, "keep_checkpoints": 5})).train(resume=True)
    assert "resuming with changed keep_checkpoints: 3 -> 5; eval_every: None -> 3" in caplog.text
    (training_folder / "triples.jsonl").write_text((training_folder / "triples.jsonl").read_text().replace(
        '"n0"', '"n1"', 1))
    with pytest.raises(ValueError, match="not the data"):
        Trainer(cfg).train(resume=True)


def test_cli_resume_reads_the_run_settings(tiny_model_dir, training_folder, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(training_folder), "--output", str(out), "--base-model", str(tiny_model_dir),
            "--dim", "16", "--doc-maxlen", "24", "--query-maxlen", "12", "--batch-size", "4",
            "--learning-rate", "1e-3", "--max-steps", "6", "--save-every", "2", "--no-progress-bar"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    shutil.rmtree(out / "checkpoints" / "step-6")  # as if killed after step 4
    again = CliRunner().invoke(app, ["train", "--output", str(out), "--resume"])
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().splitlines()[-1] == str(out / "checkpoints" / "step-6")
    changed = CliRunner().invoke(app, ["train", "--output", str(out), "--resume", "--learning-rate", "5e-3"])
    assert changed.exit_code == 2 and "learning_rate: 0.001 -> 0.005" in changed.output
    assert "Traceback" not in changed.output


def test_two_trainings_cannot_share_an_output(tiny_model_dir, training_folder, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "maxsim", "train", "--data", str(training_folder), "--output", str(out),
               "--base-model", str(tiny_model_dir), "--dim", "16", "--batch-size", "4", "--max-steps", "100000",
               "--doc-maxlen", "24", "--query-maxlen", "12", "--no-progress-bar"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.yaml").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-2000:]
        second = CliRunner().invoke(app, command[3:-5] + ["--max-steps", "2", "--learning-rate", "9e-4",
                                                          "--doc-maxlen", "24", "--query-maxlen", "12"])
        assert second.exit_code == 2 and "another process is writing the training run" in second.output
        assert "learning_rate: 9e-4" not in (out / "config.yaml").read_text()
    finally:
        first.kill()
        first.wait()


def test_settings_that_train_nothing_are_refused(tiny_model_dir, training_folder, tmp_path):
    with pytest.raises(ValueError, match="nothing is learned"):
        _config(tiny_model_dir, training_folder, tmp_path / "run", nway=1, use_ib_negatives=False)
    result = CliRunner().invoke(app, ["train", "--data", str(training_folder), "--output", str(tmp_path / "r"),
                                      "--nway", "1", "--no-ib-negatives"])
    assert result.exit_code == 2 and "nothing is learned" in result.output
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        Trainer(_config(tiny_model_dir, training_folder, tmp_path / "afile", max_steps=1)).train()


def test_a_fresh_start_forgets_the_metrics_of_an_attempt_without_checkpoints(
        tiny_model_dir, training_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9}\n{"step": 2, "loss": 9}\n{"step": 1, "loss": 9}\n')
    Trainer(_config(tiny_model_dir, training_folder, out, max_steps=2)).train(resume=True)
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] != 9 for r in rows)


def test_logs_to_a_file_have_no_progress_frames(tiny_model_dir, training_folder, tmp_path):
    command = [sys.executable, "-m", "maxsim", "train", "--data", str(training_folder), "--output",
               str(tmp_path / "run"), "--base-model", str(tiny_model_dir), "--dim", "16", "--batch-size", "4",
               "--max-steps", "3", "--doc-maxlen", "24", "--query-maxlen", "12", "--dev-fraction", "0.25",
               "--eval-every", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)  # stderr is a pipe, not a terminal
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr
    assert "training: 3/3 step" in done.stderr  # the closing progress line


def test_a_full_disk_during_a_checkpoint_is_reported_as_such(tiny_model_dir, training_folder, tmp_path, monkeypatch):
    import errno
    from collections import namedtuple

    def torch_save_on_a_full_disk(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 46906304 vs 46906192")

    monkeypatch.setattr(checkpoints.torch, "save", torch_save_on_a_full_disk)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: namedtuple("u", "total used free")(1, 1, 0))
    with pytest.raises(OSError) as err:
        Trainer(_config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=1)).train()
    assert err.value.errno == errno.ENOSPC
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))  # nothing half-written left


def test_batches_built_ahead_train_exactly_the_same(tiny_model_dir, training_folder, tmp_path, monkeypatch):
    plain = _config(tiny_model_dir, training_folder, tmp_path / "plain", max_steps=7, accumulation_steps=2)
    Trainer(plain).train()
    monkeypatch.setattr(trainer_module, "builds_ahead", lambda ctx: True)  # the GPU path's thread, on the CPU
    ahead = plain.model_copy(update={"output": tmp_path / "ahead"})
    Trainer(ahead).train()
    drop = ("triplets_per_s", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "ahead")] == \
        [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "plain")]
    assert _max_diff(_weights(tmp_path / "ahead" / "checkpoints" / "step-7"),
                     _weights(tmp_path / "plain" / "checkpoints" / "step-7")) == 0
