"""The dataclass -> argparse helper: flags, groups, types, choices, defaults, only-given parsing, validation."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from training.config import LGM_KEYS, TrainConfig
from training.configargs import add_arguments, bounds_text, check_options, from_args, given, option


@dataclass
class Opts:
    steps: int = option(20, "iterations", group="attack", ge=1, le=100)
    eps: float = option(0.3, "radius", group="attack", gt=0, le=1, default_help="0.3 grey, 8/255 colour")
    norm: str = option("linf", "threat model", group="attack", choices=("linf", "l2"))
    out: str | None = option(None, "where to write", group="output")
    verbose: bool = option(False, "say more", group="output")
    api_keys: str = option("", "keys", group="output", flag="--api-key")
    untouched: int = 7  # no option(): not a flag


def _parser(only_given: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p, Opts, only_given=only_given)
    return p


def test_groups_flags_types_and_defaults_in_help() -> None:
    p = _parser()
    titles = [g.title for g in p._action_groups]
    assert titles[-2:] == ["attack", "output"]
    help_text = " ".join(p.format_help().split())
    assert "--steps STEPS iterations (default: 20)" in help_text
    assert "--norm {linf,l2}" in help_text and "--api-key API_KEYS keys" in help_text
    assert "--verbose, --no-verbose" in help_text and "--untouched" not in help_text
    args = p.parse_args(["--steps", "5", "--eps", "0.1", "--verbose", "--api-key", "k"])
    o = from_args(Opts, args)
    assert (o.steps, o.eps, o.norm, o.out, o.verbose, o.api_keys) == (5, 0.1, "linf", None, True, "k")
    assert isinstance(o.steps, int) and isinstance(o.eps, float)


@pytest.mark.parametrize(
    "argv, message",
    [(["--steps", "x"], "invalid int value: 'x'"), (["--norm", "l1"], "invalid choice: 'l1'")],
)
def test_argparse_rejects_bad_types_and_choices(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_only_given_leaves_the_rest_unset() -> None:
    p = _parser(only_given=True)
    assert given(Opts, p.parse_args([])) == {}
    assert given(Opts, p.parse_args(["--eps", "0.2", "--no-verbose"])) == {"eps": 0.2, "verbose": False}
    help_text = " ".join(p.format_help().split())
    assert "radius (default: 0.3 grey, 8/255 colour)" in help_text  # default_help
    assert "iterations (default: 20)" in help_text
    assert help_text.count("(default:") == 6  # one per flag: argparse adds none of its own


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"steps": 0}, "--steps must be in [1, 100], got 0"),
        ({"eps": 0.0}, "--eps must be in (0, 1], got 0.0"),
        ({"eps": float("nan")}, "--eps must be a finite number, got nan"),
        ({"norm": "l1"}, "--norm must be one of linf, l2, got 'l1'"),
    ],
)
def test_check_options_messages(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        check_options(Opts(**overrides))
    assert str(exc.value) == message
    check_options(Opts())  # the defaults pass


def test_bounds_text() -> None:
    assert bounds_text({"ge": 1}) == ">= 1"
    assert bounds_text({"gt": 0}) == "> 0"
    assert bounds_text({"lt": 1.5}) == "< 1.5"
    assert bounds_text({"gt": 0, "lt": 1}) == "in (0, 1)"
    assert bounds_text({"ge": 0.0, "le": 1.0}) == "in [0, 1]"


def test_train_config_is_fully_described() -> None:
    """Every TrainConfig field is a flag with help and a group; the L-GM group is model.json's lgm block."""
    p = argparse.ArgumentParser()
    add_arguments(p, TrainConfig)
    dests = {a.dest for a in p._actions} - {"help"}
    assert dests == set(TrainConfig().to_dict())
    assert all(a.help for a in p._actions)
    assert LGM_KEYS[0] == "variance" and "lam" in LGM_KEYS and "epochs" not in LGM_KEYS
    assert from_args(TrainConfig, p.parse_args([])) == TrainConfig()


@dataclass
class ListOpts:
    stats: list[str] = option(["a", "b_c"], "statistics", group="g", choices=("a", "b_c", "d"))
    kind: str = option("per_class", "threshold kind", group="g", choices=("per_class", "global"), dashes=True)
    none_yet: list[str] | None = option(None, "optional list", group="g")


def test_comma_lists_and_dashed_spellings() -> None:
    wide = lambda prog: argparse.ArgumentDefaultsHelpFormatter(prog, width=200)  # noqa: E731 - no wrapping
    p = argparse.ArgumentParser(prog="t", formatter_class=wide)
    add_arguments(p, ListOpts)
    o = from_args(ListOpts, p.parse_args([]))
    assert (o.stats, o.kind, o.none_yet) == (["a", "b_c"], "per_class", None)  # defaults as the field's
    assert ListOpts().stats is not ListOpts().stats  # a list default is copied per instance
    o = from_args(ListOpts, p.parse_args(["--stats", "d, a", "--kind", "global", "--none-yet", ""]))
    assert (o.stats, o.kind, o.none_yet) == (["d", "a"], "global", [])
    help_text = " ".join(p.format_help().split())
    assert "(of per-class, global) (default: per-class)" in help_text  # spelt as typed
    assert "(of a, b_c, d) (default: a,b_c)" in help_text
    with pytest.raises(ValueError, match=r"^--kind must be one of per-class, global, got 'per-klass'$"):
        check_options(from_args(ListOpts, p.parse_args(["--kind", "per-klass"])))
    with pytest.raises(ValueError, match=r"^--stats must be a comma list of a, b_c, d, got 'a,x'$"):
        check_options(from_args(ListOpts, p.parse_args(["--stats", "a,x"])))


# -- the same bridge for the server's pydantic-settings class --------------------------------------------------
def test_serve_settings_flags_come_from_the_same_bridge(monkeypatch) -> None:
    from service.cli import build_parser
    from service.serve_cli import settings_from_args

    p = build_parser()
    serve = p._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    help_text = " ".join(serve.format_help().split())
    assert "TCP port (default: 8000; env LGM_PORT)" in help_text
    assert [g.title for g in serve._action_groups][2:4] == ["model", "network"]
    monkeypatch.setenv("LGM_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("LGM_API_KEYS", "env-key")
    s = settings_from_args(p.parse_args(["serve", "art", "--api-key", "a,b", "--api-key", "c"]))
    assert (
        s.api_keys == ["a", "b", "c"] and s.max_batch_size == 7
    )  # a flag beats the env var, env beats default
    assert settings_from_args(p.parse_args(["serve", "art"])).api_keys == ["env-key"]
    with pytest.raises(ValueError, match=r"^--port: Input should be less than or equal to 65535$"):
        settings_from_args(p.parse_args(["serve", "art", "--port", "70000"]))


def test_list_flags_take_comma_lists_and_repeats_everywhere() -> None:
    @dataclass
    class Lists:
        names: list[str] = option(["x", "y"], "names", group="g", choices=("a", "b", "x", "y"))

    p = argparse.ArgumentParser()
    add_arguments(p, Lists)
    assert from_args(Lists, p.parse_args([])).names == ["x", "y"]
    assert from_args(Lists, p.parse_args(["--names", "a,b"])).names == ["a", "b"]  # replaces the default
    assert from_args(Lists, p.parse_args(["--names", "a", "--names", "b"])).names == ["a", "b"]
    assert from_args(Lists, p.parse_args(["--names", ""])).names == []
