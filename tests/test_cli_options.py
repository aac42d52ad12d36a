"""One option vocabulary across commands, one spelling per option."""

from __future__ import annotations

import pytest

from lookalike.cli import build_parser
from lookalike.embed.registry import MODELS
from lookalike.search.registry import METHODS


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", ["search", "bench", "tradeoff", "tune", "scale", "report"])
def test_k_has_both_spellings_everywhere(command):
    extra = ["--image", "x.jpg"] if command == "search" else []
    assert parse(command, "--gallery", "g", *extra, "-k", "7").k == 7
    assert parse(command, "--gallery", "g", *extra, "--k", "8").k == 8


@pytest.mark.parametrize("command", ["bench", "tradeoff", "tune", "scale"])
def test_queries_is_a_count_everywhere(command):
    assert parse(command, "--gallery", "g", "--queries", "123").queries == 123


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--galleries", "a", "b"],
        ["tradeoff", "--gallery", "g", "--queries", "list.txt"],
        ["tradeoff", "--gallery", "g", "--max-queries", "50"],
        ["tradeoff", "--gallery", "g", "--single-queries", "5"],
        ["tradeoff", "--gallery", "g", "--exact-queries", "9"],
        ["scale", "--gallery", "g", "--exact-queries", "11"],
        ["extract", "--data", "d", "--out", "o", "--workers", "3"],
        ["extract", "--data", "d", "--out", "o", "--decode-workers", "3"],
    ],
)
def test_spellings_from_before_the_first_release_are_gone(capsys, argv):
    """0.1.0 was never released: one spelling per option, and an old one is an error, not a silent alias."""
    with pytest.raises(SystemExit):
        parse(*argv)
    assert "error" in capsys.readouterr().err


def test_one_spelling_each(capsys):
    args = parse("report", "--gallery", "a", "b")
    assert args.gallery == ["a", "b"]
    args = parse(
        "tradeoff", "--gallery", "g", "--query-list", "q.txt", "--timing-queries", "4", "--exact-timing-queries", "6"
    )
    assert (args.query_list, args.timing_queries, args.exact_timing_queries) == ("q.txt", 4, 6)
    assert parse("scale", "--gallery", "g", "--timing-queries", "11").timing_queries == 11
    assert capsys.readouterr().err == ""


def test_decode_threads_are_local_and_actors_are_ray():
    """`workers` meant decode threads locally and model actors on Ray: now each has its own name."""
    from lookalike.cli.core import extract_config

    local = parse("extract", "--data", "d", "--out", "o", "--decode-threads", "3", "--actors", "4")
    assert extract_config(local).decode_threads == 3
    ray = parse("extract", "--data", "d", "--out", "o", "--decode-threads", "3", "--actors", "5", "--engine", "ray")
    assert extract_config(ray).decode_threads is None and ray.actors == 5


def test_choices_come_from_the_registries():
    with pytest.raises(SystemExit):
        parse("extract", "--data", "d", "--out", "o", "--model", "vgg16")
    for name in MODELS:
        assert parse("extract", "--data", "d", "--out", "o", "--model", name).model == name
    help_text = build_parser()._subparsers._group_actions[0].choices["index"].format_help()
    assert all(name in help_text for name in METHODS)
