"""``maxsim train``: every option made from :class:`~maxsim.training.config.TrainConfig`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from maxsim.cli.common import app, fail, one_line_errors, quiet_libraries
from maxsim.cli.options import options_from, parameter, with_options
from maxsim.errors import validation_message
from maxsim.training.config import TrainConfig

#: flags whose name is not the field's (RAGatouille's spelling)
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
    if values.get("dev_data") is not None:
        from maxsim.data.datasets import resolve

        with one_line_errors():
            values["dev_data"] = resolve(values["dev_data"])  # (a dataset's name: its folder in the cache)
    if config is None and resume and output is not None and (output / "config.yaml").is_file():
        config = output / "config.yaml"  # a resume continues the run as it was set up
    try:
        if config is not None:
            if not config.is_file():
                fail(f"--config {config}: file not found")
            cfg = TrainConfig.from_yaml(config, **values)
        else:
            if values.get("data") is None or output is None:
                fail("--data and --output are required (or --config FILE)")
            cfg = TrainConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        fail(f"invalid settings: {validation_message(err)}")
    quiet_libraries()
    with one_line_errors():
        path = Trainer(cfg).train(resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(str(path))
