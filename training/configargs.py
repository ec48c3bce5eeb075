"""Command-line flags and option checks built from a config class whose fields describe themselves: the one
configuration mechanism of every ``lgm`` command.

Two kinds of class declare their options, each in its natural way, and this module builds both command lines
the same way (groups, ``--help`` defaults, flag names, one list convention):

- a dataclass whose fields are declared with :func:`option` (``TrainConfig``, ``CalibrationConfig``,
  ``EvalConfig``, ``Budgets``), checked by :func:`check_options`;
- a pydantic-settings class (``ServeSettings``) whose fields carry a ``group`` (and optionally ``flag``) in
  ``json_schema_extra``; pydantic validates it, reads ``LGM_*`` environment variables and
  :func:`one_line_error` turns its errors into one line naming the flag.

Why this bridge and not pydantic-settings' own command line (``CliApp``, tried with 2.16): it groups ``--help``
only by nested models, so every flag would become ``--calibration.target-fpr``; it has no dashed spellings of
values (``--gaussians per-class``); and its errors are multi-line. Keeping argparse keeps the commands' flags,
one-line usage errors and grouped ``--help`` with defaults as they are.

A field declared with :func:`option` carries its help, its group in ``--help``, its allowed values and its
bounds in ``dataclasses.field(metadata=...)``; :func:`add_arguments` turns every such field into one flag
(``lr_schedule`` -> ``--lr-schedule``, typed from the field's annotation), :func:`from_args` builds the
dataclass back from the parsed flags, and :func:`check_options` checks choices, bounds and finiteness with
one-line messages that name the flag. A dataclass's own ``validate()`` calls it and adds any check that spans
several fields. The package below (``detector``, ``service``) may use it for its own option tables.

Two ways to default a flag:

- ``add_arguments(parser, Cls)``: every flag defaults to the field's default (what ``--help`` shows under
  ``argparse.ArgumentDefaultsHelpFormatter``); ``from_args(Cls, args)`` builds the whole dataclass.
- ``add_arguments(parser, Cls, only_given=True)``: a flag left off the command line leaves no attribute on the
  namespace, and ``given(Cls, args)`` returns only the options that were given, for callers whose defaults are
  resolved later (per dataset, say). The help ends in ``(default: ...)`` from the field's default, or from
  ``option(..., default_help="0.3 for grey digits, 8/255 for colour")`` where the default depends on context.

Two more kinds of field: ``list[str]`` is a comma list on the command line (``--statistics a,b``; an empty
string is the empty list; a repeated flag adds to the list: ``--api-key k1 --api-key k2``), each item checked
against ``choices``, and a comma list in an environment variable too (``LGM_API_KEYS=k1,k2``); and ``option(..., dashes=True)`` lets a
string option be spelt with dashes where its value has underscores (``--gaussians per-class`` ->
``"per_class"``), which is how ``--help`` and the messages show it.

Example::

    @dataclass
    class Opts:
        steps: int = option(20, "iterations", group="attack", ge=1)
        norm: str = option("linf", "threat model", group="attack", choices=("linf", "l2"))

        def validate(self) -> None:
            check_options(self)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

_KINDS = (bool, int, float, str)


def option(
    default: Any,
    help: str,
    *,
    group: str,
    choices: Sequence[str] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    flag: str | None = None,
    default_help: str | None = None,
    dashes: bool = False,
) -> Any:
    """A dataclass field with its command-line description.

    ``ge``/``gt``/``le``/``lt`` bound a number (checked when the value is not None); ``choices`` lists the
    allowed strings (of a string, or of each item of a list); ``flag`` overrides the flag name;
    ``default_help`` replaces the default shown by ``only_given`` parsers; ``dashes`` spells the value with
    dashes on the command line. A list default is copied for every instance."""
    meta = {
        "help": help,
        "group": group,
        "choices": tuple(choices) if choices is not None else None,
        "bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None},
        "flag": flag,
        "default_help": default_help,
        "dashes": dashes,
    }
    if isinstance(default, list):
        items = list(default)
        return dataclasses.field(default_factory=lambda: list(items), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def comma_list(value: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``""`` -> ``[]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def _undash(value: str) -> str:
    return value.replace("-", "_")


def spelt(f: dataclasses.Field, value: Any) -> str:
    """A value as the command line spells it: lists comma-joined, dashes where the option takes them."""
    if isinstance(value, list):
        return ",".join(spelt(f, v) for v in value)
    return value.replace("_", "-") if f.metadata.get("dashes") and isinstance(value, str) else str(value)


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field: ``metadata['flag']`` or ``--`` + the name with dashes."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _is_settings(cls: type) -> bool:
    return hasattr(cls, "model_fields")


def _settings_field(name: str, info: Any) -> dataclasses.Field:
    """A pydantic field seen as a described dataclass field, so that one code path builds every flag."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    literal = typing.get_origin(info.annotation) is typing.Literal
    meta = {
        "help": info.description or "",
        "group": extra["group"],
        "choices": tuple(typing.get_args(info.annotation)) if literal else None,  # Literal["a", "b"]: a | b
        "bounds": {},  # pydantic checks its own bounds
        "flag": extra.get("flag"),
        "default_help": None,
        "dashes": False,
    }
    default = info.get_default(call_default_factory=True)
    f: dataclasses.Field = dataclasses.field(default=default, metadata=meta)  # type: ignore[assignment]
    f.name = name
    return f


def described_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`option` (or, for a pydantic-settings class, with a ``group``),
    in declaration order."""
    if _is_settings(cls):
        return [
            _settings_field(n, info)
            for n, info in cls.model_fields.items()  # type: ignore[attr-defined]
            if isinstance(info.json_schema_extra, dict) and "group" in info.json_schema_extra
        ]
    return [f for f in dataclasses.fields(cls) if "group" in f.metadata]


def names_in_group(cls: type, group: str) -> tuple[str, ...]:
    return tuple(f.name for f in described_fields(cls) if f.metadata["group"] == group)


def field_kind(cls: type, name: str) -> type:
    """bool, int, float, str or list (of str): the field's resolved annotation with ``| None`` removed."""
    hint = cls.model_fields[name].annotation if _is_settings(cls) else typing.get_type_hints(cls)[name]  # type: ignore[attr-defined]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    if typing.get_origin(hint) is list and typing.get_args(hint) == (str,):
        return list
    if typing.get_origin(hint) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(hint)):
        return str  # its values are the field's choices
    if hint not in _KINDS:
        raise TypeError(
            f"{cls.__name__}.{name}: annotation {hint!r} is not one of bool, int, float, str, list[str]"
        )
    return hint


class _CommaList(argparse.Action):
    """A comma list that a repeated flag extends; the first occurrence replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        seen = f"_given_{self.dest}"
        items = [] if not getattr(namespace, seen, False) else list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, seen, True)
        setattr(namespace, self.dest, items + list(values))


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only_given: bool = False,
    env_prefix: str | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, argparse._ArgumentGroup]:
    """One argument group per ``group`` (in the order groups first appear), one flag per described field.
    ``env_prefix`` names each field's environment variable in its help; ``exclude`` leaves fields out (a
    caller's positional argument, say). Returns the groups by name, for a caller that adds flags of its own."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in described_fields(cls):
        if f.name in exclude:
            continue
        g = groups.get(f.metadata["group"])
        if g is None:
            g = groups[f.metadata["group"]] = parser.add_argument_group(f.metadata["group"])
        kind = field_kind(cls, f.name)
        helptext = f.metadata["help"]
        default: Any = default_of(f)
        choices = f.metadata["choices"]
        if kind is list or f.metadata["dashes"]:
            # argparse converts a string default with ``type`` too, so --help shows the spelling a user types
            conv: Any = comma_list if kind is list else _undash
            default = None if default is None else spelt(f, default)
            if choices is not None:  # checked by check_options, which names them as they are spelt
                helptext = f"{helptext} (of {', '.join(spelt(f, c) for c in choices)})"
            choices = None
        else:
            conv = kind
        if only_given:
            spelt_default = conv is not kind  # a list or dashed value: shown as typed
            shown = f.metadata["default_help"] or (
                (default or "''") if spelt_default else repr(default_of(f))
            )
            env = f"; env {env_prefix}{f.name.upper()}" if env_prefix else ""
            helptext, default = f"{helptext} (default: {shown}{env})", argparse.SUPPRESS
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": helptext}
        if kind is bool:
            g.add_argument(flag_of(f), action=argparse.BooleanOptionalAction, **kwargs)
        elif kind is list:
            g.add_argument(flag_of(f), type=comma_list, action=_CommaList, **kwargs)
        else:
            g.add_argument(flag_of(f), type=conv, choices=choices, **kwargs)
    return groups


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The described options present on ``args`` and not None (with ``only_given``: those typed by the user)."""
    out = {}
    for f in described_fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = value
    return out


def one_line_error(cls: type, exc: Exception) -> ValueError:
    """A pydantic ValidationError of ``cls`` as one line naming the flag: ``--port: Input should be ...``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors) or not errors():
        return ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    e = errors()[0]
    loc = [str(p) for p in e.get("loc", ())]
    flags = {f.name: flag_of(f) for f in described_fields(cls)}
    where = flags.get(loc[0], loc[0]) if loc else cls.__name__
    return ValueError(f"{where}: {e.get('msg')}")


def from_args(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass built from parsed flags (fields missing from ``args`` keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in described_fields(cls) if hasattr(args, f.name)})


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def bounds_text(bounds: dict[str, float]) -> str:
    """``{"gt": 0, "le": 1}`` -> ``in (0, 1]``; ``{"ge": 1}`` -> ``>= 1``."""
    lo = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    hi = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {_num(lo[1])}"
    assert hi is not None
    return f"{'<' if hi[0] == ')' else '<='} {_num(hi[1])}"


def _in_bounds(v: float, b: dict[str, float]) -> bool:
    return (
        ("ge" not in b or v >= b["ge"])
        and ("gt" not in b or v > b["gt"])
        and ("le" not in b or v <= b["le"])
        and ("lt" not in b or v < b["lt"])
    )


def check_options(obj: Any) -> None:
    """Raise ValueError with one line naming the flag for the first option that is not allowed: a string
    outside its choices, a number outside its bounds, a float that is NaN or infinite."""
    for f in described_fields(type(obj)):
        value, flag = getattr(obj, f.name), flag_of(f)
        if value is None:
            continue
        choices = f.metadata["choices"]
        if choices is not None and isinstance(value, list):
            if any(v not in choices for v in value):
                allowed = ", ".join(spelt(f, c) for c in choices)
                raise ValueError(f"{flag} must be a comma list of {allowed}, got {spelt(f, value)!r}")
        elif choices is not None and value not in choices:
            allowed = ", ".join(spelt(f, c) for c in choices)
            raise ValueError(f"{flag} must be one of {allowed}, got {spelt(f, value)!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value}")
        bounds = f.metadata["bounds"]
        if bounds and isinstance(value, (int, float)) and not _in_bounds(value, bounds):
            raise ValueError(f"{flag} must be {bounds_text(bounds)}, got {value}")
