"""Command-line options made from the typed settings, so that each setting is declared once.

:func:`options_from` turns the fields of a pydantic model (``TrainConfig``, ``PrepareSettings``)
into typer options: the flag is the field's name with dashes, the help its description followed
by its default, and a boolean gets ``--flag/--no-flag``. Every option defaults to None, meaning
"not given", so that a value from ``--config`` or the model's own default applies.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Literal, Union

import typer
from pydantic import BaseModel

from maxsim.inputs import literal_choices


def flag_name(name: str) -> str:
    """``--flag-name`` of a field name.

    >>> flag_name("use_ib_negatives")
    '--use-ib-negatives'
    """
    return "--" + name.replace("_", "-")


def cli_type(annotation) -> type:
    """The type an option parses to: Optional and Literal are unwrapped (pydantic checks the
    value), a union with a Literal (``int | "auto"``) is read as text, a tuple as a repeatable option.

    >>> cli_type(int | None), cli_type(Literal["a", "b"]), cli_type(int | Literal["auto"]), cli_type(tuple[str, ...])
    (<class 'int'>, <class 'str'>, <class 'str'>, list[str])
    """
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return cli_type(members[0])
        return str
    if origin is Literal:
        return type(typing.get_args(annotation)[0])
    if origin is tuple:
        return list[str]
    return annotation


def default_text(field) -> str:
    """`` [default: X]`` for a field, unless its description already says the default."""
    if "[default:" in (field.description or "") or field.is_required():
        return ""
    value = field.get_default(call_default_factory=True)
    if value is None:
        return ""
    if isinstance(value, bool):
        return " [default: on]" if value else " [default: off]"
    if isinstance(value, tuple):
        value = ", ".join(map(str, value)) or "none"
    return f" [default: {value}]"


def help_text(field) -> str:
    """An option's help: the field's description, its choices (any case) and its default."""
    choices = literal_choices(field.annotation)
    listed = "" if not choices or "one of" in (field.description or "") else \
        f" One of: {', '.join(map(str, choices))}."
    return (field.description or "") + listed + default_text(field)


def options_from(model: type[BaseModel], flags: dict[str, str] | None = None,
                 skip: Iterable[str] = ()) -> list[inspect.Parameter]:
    """Keyword parameters, one per field of ``model`` (but ``skip``), each an option that
    defaults to None. ``flags`` renames some (field name -> flag name without dashes)."""
    flags = flags or {}
    out = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind = cli_type(field.annotation)
        flag = flag_name(flags.get(name, name))
        declarations = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        metavar = "<str>" if kind == list[str] else None  # (a repeatable option takes one value a time)
        option = typer.Option(*declarations, help=help_text(field), show_default=False, metavar=metavar)
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=Annotated[kind | None, option]))
    return out


def option_for(model: type[BaseModel], name: str, *flags: str):
    """The option of one field of ``model`` (flags: ``--field-name`` unless given), its help
    the field's description and default, for a command whose other parameters are written out:
    ``k: option_for(SearchSettings, "k", "-k", "--k") = DEFAULT_K``."""
    field = model.model_fields[name]
    kind = cli_type(field.annotation)
    option = typer.Option(*(flags or (flag_name(name),)), help=help_text(field), show_default=False)
    return Annotated[kind | None, option]


def with_options(*parameters: inspect.Parameter) -> Callable[[Callable], Callable]:
    """Give a ``def command(**values)`` these parameters, for typer to read as its options."""
    def decorate(function: Callable) -> Callable:
        function.__signature__ = inspect.Signature(list(parameters))
        return function
    return decorate


def parameter(name: str, annotation, default=inspect.Parameter.empty, positional: bool = False) -> inspect.Parameter:
    """One parameter that is not a setting (the inputs, an output folder, ``--resume``):
    ``annotation`` is ``Annotated[type, typer.Option(...)]`` (or ``typer.Argument``)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if positional else inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(name, kind, default=default, annotation=annotation)
