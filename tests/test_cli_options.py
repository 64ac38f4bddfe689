"""Each setting is declared once: the CLI's flags, defaults and help come from the config models."""

from __future__ import annotations

import pytest
import torch
import typer
from typer.testing import CliRunner

from maxsim.cli import TRAIN_FLAGS, app
from maxsim.cli.options import help_text
from maxsim.data.settings import PrepareSettings
from maxsim.training.config import TrainConfig

PREPARE_FLAGS = {"positive_labels": "positive_label", "negative_labels": "negative_label"}


def options_of(command: str) -> dict[str, object]:
    """The options of ``command`` ("index build" for a subcommand)."""
    click_command = typer.main.get_command(app)
    for name in command.split():
        click_command = click_command.commands[name]
    return {param.name: param for param in click_command.params}


@pytest.mark.parametrize("command, model, flags", [("train", TrainConfig, TRAIN_FLAGS),
                                                   ("prepare", PrepareSettings, PREPARE_FLAGS)])
def test_every_setting_has_a_flag_with_its_help_and_default(command, model, flags):
    options = options_of(command)
    for name, field in model.model_fields.items():
        assert name in options, f"{model.__name__}.{name} has no flag in maxsim {command}"
        option = options[name]
        flag = "--" + flags.get(name, name).replace("_", "-")
        assert flag in option.opts, (name, option.opts)
        assert option.help == help_text(field)
        assert field.description and field.description in option.help
        # the flag's own default is "not given": the model's default (or --config) applies
        assert option.default is None
        if not field.is_required() and field.get_default() not in (None, ()):
            shown = field.get_default()
            shown = ("on" if shown else "off") if isinstance(shown, bool) else \
                ", ".join(map(str, shown)) if isinstance(shown, tuple) else str(shown)
            assert f"[default: {shown}]" in option.help or "[default:" in field.description, (name, option.help)


def test_a_flag_left_out_takes_the_models_default(tmp_path, monkeypatch):
    """What `maxsim train` builds from flags equals TrainConfig's own defaults for every flag not given."""
    seen = {}

    class Stop(Exception):
        pass

    class FakeTrainer:
        def __init__(self, config):
            seen["config"] = config
            raise Stop

    monkeypatch.setattr("maxsim.training.Trainer", FakeTrainer)
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path), "--output", str(tmp_path / "o"),
                                      "--no-ib-negatives", "--nway", "3", "--warmup-steps", "7"])
    assert isinstance(result.exception, Stop), result.output
    config = seen["config"]
    expected = TrainConfig(data=tmp_path, output=tmp_path / "o", use_ib_negatives=False, nway=3, warmup_steps=7)
    assert config == expected


def test_prepare_refuses_a_bad_setting_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o"),
                                      "--mine", "dense"])
    assert result.exit_code == 2
    assert "--mine dense needs --miner-model" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o"),
                                      "--export", "pylate"])
    assert result.exit_code == 2 and "export" in result.output


def test_every_command_that_loads_a_model_has_the_same_device_option():
    for command in ("prepare", "score", "eval", "index build", "add", "serve"):
        option = options_of(command)["device"]
        assert option.opts == ["--device"] and option.default == "auto", command
        assert "cuda" in option.help and "auto" in option.help
    assert options_of("serve")["allow_model_mismatch"].opts == ["--allow-model-mismatch"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal where no CUDA GPU is visible")
@pytest.mark.parametrize("command", [
    ["score", "{tmp}/no-such-folder", "--teacher", "{tmp}/no-model", "--output", "{tmp}/out"],
    ["eval", "--data", "{tmp}/no-such-folder", "--model", "base"],
    ["prepare", "{tmp}/no-such.jsonl", "--output", "{tmp}/out", "--mine", "dense", "--miner-model", "{tmp}/m"],
    ["index", "build", "{tmp}/no-such.jsonl", "--model", "base", "--output", "{tmp}/out"],
])
def test_a_cuda_device_that_is_not_there_is_refused_before_any_work(tmp_path, command):
    """The inputs do not exist either: the device is checked first, in one line, not after reading them."""
    args = [a.format(tmp=tmp_path) for a in command] + ["--device", "cuda"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--device cuda: no CUDA GPU is visible" in result.output and "--device cpu" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_the_command_line_starts_without_torch():
    """``maxsim --help`` and every command's --help load neither torch nor transformers (they are
    imported by the commands that run a model), so that they answer in well under a second."""
    import subprocess
    import sys

    code = ("import sys; from typer.main import get_command; from maxsim.cli import app; "
            "get_command(app); print(sorted(m for m in ('torch', 'transformers', 'faiss', 'numba') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
    version = subprocess.run([sys.executable, "-m", "maxsim", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("maxsim ")


def test_choices_are_read_in_any_case_and_listed_in_help(tmp_path):
    from maxsim.data.settings import PrepareSettings

    assert PrepareSettings.checked(mine="BM25").mine == "bm25"
    assert TrainConfig(data=tmp_path, output=tmp_path / "o", loss="Combined").loss == "combined"
    assert "One of: bm25, dense, none." in options_of("prepare")["mine"].help
    assert "One of: contrastive, distillation, combined." in options_of("train")["loss"].help
    refused = CliRunner().invoke(app, ["prepare", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "o"),
                                       "--mine", "bm26"])
    assert refused.exit_code == 2 and "'bm25', 'dense' or 'none'" in refused.output and "Traceback" not in refused.output


def test_indexing_prints_no_warning_that_does_not_apply(tmp_path, tiny_model_dir):
    """faiss's loader lines and small-sample warning, and the tokenizer's long-text warning
    (maxsim cuts long texts into chunks), stay out of what `maxsim index build` prints."""
    import json
    import subprocess
    import sys

    from maxsim.model import ColBERT

    model = ColBERT.from_pretrained(tiny_model_dir, dim=16, doc_maxlen=24).save(tmp_path / "model")
    long_text = " ".join(["tides and the moon"] * 300)  # past the tokenizer's 512 tokens
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                              for i, t in enumerate([long_text, "a short note", "volcanoes erupt"])))
    done = subprocess.run([sys.executable, "-m", "maxsim", "index", "build", str(corpus), "--model", str(model),
                           "--output", str(tmp_path / "ix")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for noise in ("faiss.loader", "please provide at least", "Token indices sequence length"):
        assert noise not in done.stderr, noise


def test_errors_and_the_version_are_had_from_maxsim():
    import importlib.resources

    import maxsim

    assert issubclass(maxsim.IndexLoadError, maxsim.MaxsimError) and issubclass(maxsim.SettingsError, ValueError)
    assert maxsim.UnknownIdError and maxsim.OutputExistsError and maxsim.LockedError
    assert maxsim.__version__ != "unknown" and importlib.resources.files("maxsim").joinpath("py.typed").is_file()
