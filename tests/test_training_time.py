"""Training that spends its time well: bf16 autocast on CPUs that compute it, attention dropout,
a wall-clock budget that sets the schedule, and early stopping."""

import json
import logging

import pytest
import torch
from pydantic import ValidationError
from test_training import _config, _rows, script_model_metric

from maxsim.errors import SettingsError
from maxsim.training import TrainConfig, Trainer, budget, checkpoints, precision
from maxsim.training import trainer as trainer_module
from maxsim.training.budget import Budget, LinearSchedule, steps_that_fit


def test_the_linear_schedule_is_hugging_faces_and_travels_with_the_scheduler():
    from transformers import get_linear_schedule_with_warmup

    weights = [torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.lr_scheduler.LambdaLR(optimizer := torch.optim.SGD(weights, lr=1.0), LinearSchedule(3, 17))
    theirs = get_linear_schedule_with_warmup(other := torch.optim.SGD(weights, lr=1.0), 3, 17)
    for _ in range(20):
        assert ours.get_last_lr() == theirs.get_last_lr()
        optimizer.step(), other.step()
        ours.step(), theirs.step()
    state = ours.state_dict()
    assert state["lr_lambdas"][0] == {"warmup": 3, "total": 17}
    fresh = LinearSchedule(0, 1)
    torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(weights, lr=1.0), fresh).load_state_dict(state)
    assert (fresh.warmup, fresh.total) == (3, 17)  # a resumed run gets the lengths its budget set


def test_durations_and_their_errors():
    assert TrainConfig(data="d", output="o", max_time="1h30m").max_time == 5400.0
    assert TrainConfig(data="d", output="o", max_time="00:02:30").max_time == 150.0
    with pytest.raises(ValidationError, match="is not a duration"):
        TrainConfig(data="d", output="o", max_time="soon")
    with pytest.raises(ValidationError, match="more than 0 seconds"):
        TrainConfig(data="d", output="o", max_time=0)
    assert steps_that_fit(Budget(100.0, started=Budget.clock()), 0, 10.0, 0.0, None, 1000) == 9


@pytest.fixture
def step_clock(monkeypatch):
    """The budget's clock reads 2 seconds per optimizer step taken."""
    steps = {"n": 0}
    apply = trainer_module.apply_gradients

    def counted(*args, **kwargs):
        steps["n"] += 1
        return apply(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "apply_gradients", counted)
    monkeypatch.setattr(Budget, "clock", staticmethod(lambda: 2.0 * steps["n"]))
    return steps


def test_a_time_budget_ends_the_run_and_a_resume_does_not_restart_it(tiny_model_dir, training_folder, tmp_path,
                                                                   step_clock, caplog):
    out = tmp_path / "run"
    cfg = _config(tiny_model_dir, training_folder, out, max_time=21, epochs=3)
    with caplog.at_level(logging.INFO):
        path = Trainer(cfg).train()
    assert path == out / "checkpoints" / "step-11"  # 22 s spent after step 11: over the 21
    assert "the time budget (21s) is spent at step 11" in caplog.text
    assert "--epochs 3 does not cap a run with --max-time" in caplog.text
    assert "--max-time 21s: 6 steps at" in caplog.text and "the schedule is set for" in caplog.text
    position = checkpoints.read_position(path)
    assert position.stopped == "time budget" and position.spent_s == 22.0 and position.planned_steps > 11
    assert [r["step"] for r in _rows(out)] == list(range(1, 12))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert Trainer(cfg).train(resume=True) == path
    assert "had already ended: nothing to continue" in caplog.text
    assert [r["step"] for r in _rows(out)] == list(range(1, 12))


def test_a_budget_sets_the_schedule_from_the_pace(tiny_model_dir, training_folder, tmp_path, caplog):
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_time=3600, max_steps=12)
    with caplog.at_level(logging.INFO):
        Trainer(cfg).train()
    rows = _rows(tmp_path / "run")
    assert len(rows) == 12 and rows[-1]["lr"] == 0.0  # the schedule ends where the run does
    assert "(the --max-steps cap)" in caplog.text
    assert checkpoints.read_position(tmp_path / "run" / "checkpoints" / "step-12").planned_steps == 12


def test_early_stopping_stops_after_patience_evaluations_without_a_gain(tiny_model_dir, training_folder, tmp_path,
                                                                        monkeypatch, caplog):
    # step 0, then steps 1, 2, 3: the best at 1, then two that do not beat it by more than 0.01
    script_model_metric(monkeypatch, [0.3, 0.5, 0.4, 0.505, 0.9, 0.9])
    out = tmp_path / "run"
    cfg = _config(tiny_model_dir, training_folder, out, epochs=4, dev_fraction=0.25, eval_every=1,
                  early_stopping_patience=2, early_stopping_threshold=0.01)
    with caplog.at_level(logging.INFO):
        best = Trainer(cfg).train()
    assert json.loads((best / "best.json").read_text())["step"] == 3  # 0.505 is best/, though not "better"
    position = checkpoints.read_position(checkpoints.latest_checkpoint(out))
    assert position.step == 3 and position.stopped == "early stopping" and position.bad_evals == 2
    assert "early stopping: 2 dev evaluations in a row have not beaten the best" in caplog.text
    assert Trainer(cfg).train(resume=True) == best
    assert max(r["step"] for r in _rows(out)) == 3


def test_early_stopping_needs_evaluations(tiny_model_dir, training_folder, tmp_path):
    with pytest.raises(SettingsError, match="no dev set"):
        Trainer(_config(tiny_model_dir, training_folder, tmp_path / "a", early_stopping_patience=2)).train()
    with pytest.raises(SettingsError, match="--eval-every"):
        Trainer(_config(tiny_model_dir, training_folder, tmp_path / "b", early_stopping_patience=2,
                        dev_fraction=0.25)).train()


def test_cpu_training_precision_follows_the_cpu(tiny_model_dir, training_folder, tmp_path, cpu_bf16, caplog):
    """bf16 autocast where the CPU computes bf16 (forced either way here), float32 weights always."""
    cpu = torch.device("cpu")
    assert precision.uses_bf16(cpu) is cpu_bf16
    assert ("bf16 autocast" in precision.describe(cpu)) is cpu_bf16
    seen = []
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=3, learning_rate=1e-3)
    original = trainer_module.forward_backward

    def spying(model, *args, **kwargs):
        handle = model.linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        try:
            return original(model, *args, **kwargs)
        finally:
            handle.remove()

    trainer_module.forward_backward, saved = spying, trainer_module.forward_backward
    try:
        with caplog.at_level(logging.INFO):
            path = Trainer(cfg).train()
    finally:
        trainer_module.forward_backward = saved
    assert set(seen) == {torch.bfloat16 if cpu_bf16 else torch.float32}
    assert ("training in bf16 autocast" in caplog.text) is cpu_bf16
    assert "--attention-dropout 0 trains several times faster" in caplog.text  # (the hint, on a CPU)
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float32 for t in load_file(str(path / "model.safetensors")).values())
    losses = [r["loss"] for r in _rows(tmp_path / "run")]
    assert all(0 < loss < 10 for loss in losses)


def test_bf16_training_follows_float32s_gradients(tiny_model_dir, training_folder, monkeypatch):
    """The same step in each precision: the gradients point the same way."""
    import numpy as np

    from maxsim.data.batches import TokenCache, build_batch
    from maxsim.data.training_folder import TrainingData
    from maxsim.model import ColBERT
    from maxsim.training.distributed import Context

    cfg = TrainConfig(data=training_folder, output="unused", nway=2)
    data = TrainingData.load(training_folder, 2)

    def gradients(forced):
        monkeypatch.setenv("MAXSIM_CPU_BF16", forced)
        torch.manual_seed(0)
        model = ColBERT.from_pretrained(tiny_model_dir, dim=16, query_maxlen=12, doc_maxlen=24, seed=3)
        model.eval()  # (no dropout: the two runs see the same network)
        batch = build_batch(model, data, TokenCache(model, data), data.positives_of(), np.arange(8), 2, 7, 0)
        trainer_module.forward_backward(model, batch, Context(), cfg, 0, 8)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    exact, fast = gradients("0"), gradients("1")
    assert torch.nn.functional.cosine_similarity(exact, fast, dim=0) > 0.98


def test_attention_dropout_is_set_and_saved_in_the_config(tiny_model_dir, training_folder, tmp_path, caplog):
    from maxsim.model import ColBERT
    from maxsim.model.inference import set_attention_dropout

    model = ColBERT.from_pretrained(tiny_model_dir, dim=16)
    assert set_attention_dropout(model.encoder, 0.0) == 2  # one attention module a layer
    assert model.encoder.config.attention_probs_dropout_prob == 0.0
    assert set_attention_dropout(torch.nn.Linear(2, 2), 0.0) == 0
    cfg = _config(tiny_model_dir, training_folder, tmp_path / "run", max_steps=2, attention_dropout=0.0)
    with caplog.at_level(logging.INFO):
        path = Trainer(cfg).train()
    assert "attention dropout while training: 0" in caplog.text
    assert json.loads((path / "config.json").read_text())["attention_probs_dropout_prob"] == 0.0
    assert budget.UNBOUNDED_STEPS > 10**6
