"""One option vocabulary across commands; old spellings still parse, with a warning that names the new one."""

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
    "argv, dest, value, new",
    [
        (["report", "--galleries", "a", "b"], "gallery", ["a", "b"], "--gallery"),
        (["tradeoff", "--gallery", "g", "--queries", "list.txt"], "query_list", "list.txt", "--query-list"),
        (["tradeoff", "--gallery", "g", "--max-queries", "50"], "queries", 50, "--queries"),
        (["tradeoff", "--gallery", "g", "--single-queries", "5"], "timing_queries", 5, "--timing-queries"),
        (["tradeoff", "--gallery", "g", "--exact-queries", "9"], "exact_timing_queries", 9, "--exact-timing-queries"),
        (["tune", "--gallery", "g", "--max-queries", "60"], "queries", 60, "--queries"),
        (["scale", "--gallery", "g", "--exact-queries", "11"], "timing_queries", 11, "--timing-queries"),
        (["bench", "--gallery", "g", "--single-queries", "12"], "timing_queries", 12, "--timing-queries"),
        (["extract", "--data", "d", "--out", "o", "--workers", "3"], "legacy_workers", 3, "--decode-workers"),
    ],
)
def test_old_spellings_work_and_warn(capsys, argv, dest, value, new):
    assert getattr(parse(*argv), dest) == value
    err = capsys.readouterr().err
    assert "deprecated" in err and new in err


def test_new_spellings_do_not_warn(capsys):
    args = parse("report", "--gallery", "a", "b")
    assert args.gallery == ["a", "b"]
    args = parse(
        "tradeoff", "--gallery", "g", "--query-list", "q.txt", "--timing-queries", "4", "--exact-timing-queries", "6"
    )
    assert (args.query_list, args.timing_queries, args.exact_timing_queries) == ("q.txt", 4, 6)
    args = parse("extract", "--data", "d", "--out", "o", "--decode-workers", "2", "--actors", "4")
    assert (args.decode_workers, args.actors, args.legacy_workers) == (2, 4, None)
    assert capsys.readouterr().err == ""


def test_old_workers_maps_to_decode_workers_locally_and_actors_on_ray():
    from lookalike.cli.core import extract_config

    local = parse("extract", "--data", "d", "--out", "o", "--workers", "3")
    assert extract_config(local).workers == 3
    ray = parse("extract", "--data", "d", "--out", "o", "--workers", "5", "--engine", "ray")
    assert extract_config(ray).workers is None and ray.actors == 5


def test_choices_come_from_the_registries():
    with pytest.raises(SystemExit):
        parse("extract", "--data", "d", "--out", "o", "--model", "vgg16")
    for name in MODELS:
        assert parse("extract", "--data", "d", "--out", "o", "--model", name).model == name
    help_text = build_parser()._subparsers._group_actions[0].choices["index"].format_help()
    assert all(name in help_text for name in METHODS)
