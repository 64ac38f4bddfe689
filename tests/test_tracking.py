"""--report-to: every metrics row reaches TensorBoard, W&B, MLflow and trackio, read back with their own readers."""

import json

import pytest
from conftest import make_training_folder

from maxsim.errors import SettingsError
from maxsim.training import TrainConfig, Trainer
from maxsim.training.tracking import Trackers, mlflow_name

ALL = ("tensorboard", "wandb", "mlflow", "trackio")


def _config(tiny_model_dir, data, output, **kw):
    values = dict(data=data, output=output, base_model=str(tiny_model_dir), dim=16, query_maxlen=12, doc_maxlen=24,
                  batch_size=4, learning_rate=1e-3, progress_bar=False, seed=5, dev_fraction=0.25, eval_every=2,
                  save_every=2, report_to=ALL)
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture
def local_stores(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _rows(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_every_row_reaches_every_tracker_and_a_resume_continues_the_same_runs(tiny_model_dir, local_stores,
                                                                              monkeypatch):
    pytest.importorskip("tensorboard"), pytest.importorskip("wandb"), pytest.importorskip("mlflow")
    pytest.importorskip("trackio")
    from maxsim.training import checkpoints

    data = make_training_folder(local_stores / "data")
    output = local_stores / "run"
    real_save = checkpoints.save_checkpoint

    def save_then_die(output, model, optimizer, scheduler, position, *args):
        path = real_save(output, model, optimizer, scheduler, position, *args)
        if position.step == 2:
            raise KeyboardInterrupt  # the process dies right after step-2 is on disk
        return path

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_config(tiny_model_dir, data, output, max_steps=4)).train()
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    first_ids = json.loads((output / "trackers.json").read_text())
    Trainer(_config(tiny_model_dir, data, output, max_steps=4)).train(resume=True)
    ids = json.loads((output / "trackers.json").read_text())
    assert ids == first_ids  # the same W&B run, MLflow run and trackio run, continued
    rows = _rows(output)
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    dev = {r["step"]: r["dev_ndcg@10"] for r in rows if "dev_ndcg@10" in r}
    assert sorted(losses) == [1, 2, 3, 4] and sorted(dev) == [0, 2, 4]
    best = json.loads((output / "best" / "best.json").read_text())["metrics"]

    # TensorBoard: its own event reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    assert {e.step: pytest.approx(e.value, rel=1e-6) for e in events.Scalars("loss")} == losses
    assert {e.step: pytest.approx(e.value, rel=1e-6) for e in events.Scalars("dev_ndcg@10")} == dev
    assert "settings" in str(events.Tags())

    # MLflow: the SQLite store and its client
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(output / 'mlflow.db').resolve()}")
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED" and run.data.params["learning_rate"] == "0.001"
    history = {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "loss")}
    assert history == pytest.approx(losses)
    assert {m.step: m.value for m in client.get_metric_history(ids["mlflow"], mlflow_name("dev_ndcg@10"))} == \
        pytest.approx(dev)
    assert run.data.metrics["best_ndcg_at_10"] == pytest.approx(best["ndcg@10"])

    # W&B offline: both attempts wrote to the same run id (the resume continued it), records on disk
    runs = sorted((output / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    assert len(runs) == 2 and all((r / f"run-{ids['wandb']}.wandb").stat().st_size > 0 for r in runs)
    history, config = {}, {}
    for run_folder in runs:  # read back through W&B's own record type (wandb.proto)
        for record in _wandb_records(run_folder / f"run-{ids['wandb']}.wandb"):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                if "loss" in items:
                    history[int(items["_step"])] = items["loss"]
            elif kind in ("config", "run"):  # (the settings come with the run record)
                items = record.config.update if kind == "config" else record.run.config.update
                config.update({i.key: json.loads(i.value_json) for i in items})
    assert history == pytest.approx(losses)
    assert config["learning_rate"] == 0.001 or config["learning_rate"].get("value") == 0.001

    # trackio: its local SQLite store
    from trackio import SQLiteStorage

    logs = SQLiteStorage.get_logs("maxsim", ids["trackio"])
    assert {r["step"]: r["loss"] for r in logs if "loss" in r} == pytest.approx(losses)


def test_a_missing_library_or_name_is_an_error_before_training(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    data = make_training_folder(tmp_path / "data")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SettingsError, match=r"pip install 'maxsim\[wandb\]'"):
        Trainer(_config(tiny_model_dir, data, tmp_path / "run", report_to=("wandb",))).train()
    assert not list((tmp_path / "run").glob("checkpoints/*"))
    with pytest.raises(ValueError, match="report_to"):
        _config(tiny_model_dir, data, tmp_path / "run", report_to=("comet",))
    assert _config(tiny_model_dir, data, tmp_path / "r", report_to="tensorboard,mlflow").report_to == (
        "tensorboard", "mlflow")
    assert _config(tiny_model_dir, data, tmp_path / "r", report_to=["none"]).report_to == ()


def test_only_rank_0_reports(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = _config(tiny_model_dir, make_training_folder(tmp_path / "data"), tmp_path / "run", report_to=("tensorboard",))
    trackers = Trackers(cfg, resuming=False, is_main=False)
    assert trackers.trackers == [] and not (tmp_path / "run").exists()


def _wandb_records(path):
    """The records of a W&B run file (its ``.wandb`` transaction log: a 7-byte header, then
    leveldb-log blocks of 32 KiB holding protobuf ``Record``s, whole or in pieces)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, block, pieces = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # (a block's tail too short for a header is padding)
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        pieces += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # a whole record, or a record's last piece
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record
