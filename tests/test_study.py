"""`lookalike study`: the whole study in one resumable command.

The runner's logic (which steps run, which are skipped, what a failure keeps) is tested with every
step replaced by a stand-in, in milliseconds; the real study runs once, end to end through the CLI,
on the tiny generated collection (tests/conftest.py `tiny_study`), and its report is checked
against the result files it was built from.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

import lookalike
from lookalike.fileio import json_text
from lookalike.study import pipeline
from lookalike.study.bench import BenchResult
from lookalike.study.estimate import Calibration
from lookalike.study.htmlreport import inline, markdown_list, markdown_table
from lookalike.study.leakage import Leakage
from lookalike.study.pipeline import StudyConfig, auto_sizes, run_study
from lookalike.study.state import STATE_FILE, StudyError, StudyState, from_dict, read_state, write_state
from lookalike.study.tradeoff import TradeoffResult
from lookalike.study.tune import TuneResult

from .conftest import STUDY_OPTIONS, run_main

MODEL = "resnet18"
ORDER = [f"{step} {MODEL}" for step in pipeline.PER_MODEL] + ["report"]


class FakeSteps:
    """Every step replaced by a stand-in that records its call and writes one file, so the runner's own logic is
    what runs: an extract writes a manifest whose fingerprint is its output, as a real gallery's is, and every other
    step's output is made from its inputs'."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        self.outputs: dict[str, str] = {}  # unit → the output it produces (default "v1")
        self.fail: dict[str, Exception] = {}
        for step in pipeline.STEPS:
            monkeypatch.setitem(pipeline.STEP_RUNNERS, step, self.run)
        monkeypatch.setattr(pipeline.estimate, "calibrate", lambda: Calibration(100.0, 0.0))

    def run(self, study, unit, log):
        self.calls.append(unit.id)
        if unit.id in self.fail:
            raise self.fail[unit.id]
        # a step's output follows its inputs, as a computation's does; an extract's is its gallery's ("v1" by default)
        inputs = [study.state.units[u.id].output for u in study.upstream(unit)]
        output = self.outputs.get(unit.id, "v1" if unit.step == "extract" else "-".join([unit.id, *inputs]))
        if unit.step == "extract":
            path = study.gallery_path(unit.model) / "manifest.json"
            text = json.dumps({"fingerprint": output})
        else:
            path = study.out / "fake" / f"{unit.id.replace(' ', '-')}.txt"
            text = output
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return [path.relative_to(study.out).as_posix()], output

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
def fake(monkeypatch) -> FakeSteps:
    return FakeSteps(monkeypatch)


def config_for(data: Path, out: Path, **changes) -> StudyConfig:
    return dataclasses.replace(
        StudyConfig(data=str(data), out=out, models=(MODEL,), sizes=(2000, 4000), weights="random"), **changes
    )


def quiet(config: StudyConfig, **options) -> pipeline.StudyRun:
    return run_study(config, echo=lambda line: None, **options)


# --- which steps run: the runner alone ---


def test_a_rerun_skips_every_step_and_a_changed_input_reruns_only_its_dependents(fake, tiny_collection, tmp_path):
    config = config_for(tiny_collection, tmp_path / "study")
    run = quiet(config)
    assert fake.take() == ORDER == run.ran
    assert set(read_state(config.out).units) == set(ORDER)

    run = quiet(config)
    assert fake.take() == [] and run.ran == [] and run.skipped == ORDER

    # another scale size: the scale step and the report only
    assert quiet(config_for(tiny_collection, config.out, sizes=(2000, 3000))).ran == [f"scale {MODEL}", "report"]
    assert fake.take() == [f"scale {MODEL}", "report"]

    # another model: its own steps and the report; resnet18's stay
    both = config_for(tiny_collection, config.out, sizes=(2000, 3000), models=(MODEL, "mobilenet"))
    assert quiet(both).ran == [f"{step} mobilenet" for step in pipeline.PER_MODEL] + ["report"]
    assert quiet(both).ran == []


def test_a_changed_gallery_reruns_everything_after_it_and_an_identical_one_nothing(fake, tiny_collection, tmp_path):
    config = config_for(tiny_collection, tmp_path / "study")
    quiet(config)
    fake.take()
    # re-extracted to the same gallery (its fingerprint unchanged): nothing downstream runs again
    assert quiet(config, only="extract").ran == [f"extract {MODEL}"]
    assert quiet(config).ran == []
    # re-extracted to another gallery: every step that reads it runs again, in order
    fake.outputs[f"extract {MODEL}"] = "v2"
    quiet(config, only="extract")
    fake.take()
    assert quiet(config).ran == ORDER[1:]


def test_a_touched_file_is_listed_again_but_stops_at_extract_when_the_gallery_is_the_same(
    fake, tiny_collection, tmp_path
):
    data = tmp_path / "data"
    shutil.copytree(tiny_collection, data)
    config = config_for(data, tmp_path / "study")
    quiet(config)
    fake.take()
    image = sorted(data.glob("train/*/images/*.JPEG"))[0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    lines: list[str] = []
    run = run_study(config, echo=lines.append)
    assert fake.take() == [f"extract {MODEL}"] == run.ran  # the data changed: extract runs; its gallery did not
    assert any("inputs unchanged after all, skipped" in line for line in lines)
    assert run.skipped[-1] == "report"

    image.unlink()  # a removed image is another gallery (the stand-in says so): everything after extract runs
    fake.outputs[f"extract {MODEL}"] = "v2"
    assert quiet(config).ran == ORDER


def test_only_and_from(fake, tiny_collection, tmp_path):
    config = config_for(tiny_collection, tmp_path / "study")
    quiet(config)
    fake.take()
    fake.outputs[f"bench {MODEL}"] = "v2"  # measured again: other timings
    assert quiet(config, only="bench").ran == [f"bench {MODEL}"]
    assert quiet(config).ran == ["report"]  # the report read the old bench: it follows
    assert quiet(config, start="scale").ran == [f"scale {MODEL}", f"leakage {MODEL}", "report"]
    assert quiet(config, only="report").ran == ["report"]


def test_only_refuses_a_step_whose_inputs_never_finished(fake, tiny_collection, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(StudyError, match=rf"--only bench: bench {MODEL} needs extract {MODEL}, which has not finished"):
        quiet(config_for(tiny_collection, out), only="bench")
    assert fake.calls == [] and not out.exists()


def test_a_failing_step_stops_the_run_keeps_what_finished_and_the_rerun_continues(fake, tiny_collection, tmp_path):
    config = config_for(tiny_collection, tmp_path / "study")
    fake.fail[f"tradeoff {MODEL}"] = RuntimeError("boom\nsecond line")
    with pytest.raises(StudyError) as raised:
        quiet(config)
    message = str(raised.value)
    assert re.fullmatch(
        rf"step tradeoff {MODEL} failed: RuntimeError: boom \(traceback in \S+\); the 3 finished step\(s\) are kept in"
        rf" {re.escape(str(config.out))}, and rerunning the same command continues from here",
        message,
    )
    assert "RuntimeError: boom" in (config.out / "logs" / f"tradeoff-{MODEL}.log").read_text()
    assert set(read_state(config.out).units) == set(ORDER[:3])

    fake.take()
    fake.fail[f"tradeoff {MODEL}"] = lookalike.LookalikeError("no room on the disk")
    with pytest.raises(StudyError, match=rf"^step tradeoff {MODEL} failed: no room on the disk; the 3 finished"):
        quiet(config)
    assert fake.take() == [f"tradeoff {MODEL}"]  # extract, index, bench were not run again

    del fake.fail[f"tradeoff {MODEL}"]
    assert quiet(config).ran == ORDER[3:]


def test_one_run_at_a_time_per_study_folder(fake, tiny_collection, tmp_path, monkeypatch):
    config = config_for(tiny_collection, tmp_path / "study")
    second: list[str] = []

    def bench_while_another_starts(study, unit, log):
        try:
            quiet(config)
        except StudyError as exc:
            second.append(str(exc))
        return fake.run(study, unit, log)

    monkeypatch.setitem(pipeline.STEP_RUNNERS, "bench", bench_while_another_starts)
    assert quiet(config).ran == ORDER
    assert second == [
        f"{config.out} is in use by another `lookalike study` run; wait for it to finish, or use another --out"
    ]
    assert quiet(config).ran == []  # released at the end


def test_auto_sizes_follow_the_collection():
    assert auto_sizes(100_000) == (100_000, 1_000_000)  # tiny-ImageNet's train split: the study's question (ii)
    assert auto_sizes(1_800) == (1_000, 10_000)  # the demo's generated collection
    assert auto_sizes(99_999) == (10_000, 100_000)


# --- bad input: one sentence, nothing written, nothing lost ---


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("option", ["--only", "--from"])
def test_an_unknown_step_is_one_sentence(tiny_collection, tmp_path, option):
    out = tmp_path / "study"
    line = one_error_line(run_main("study", "--data", tiny_collection, "--out", out, option, "nope", check=False))
    assert line == (
        f"lookalike study: error: unknown step 'nope' for {option}; the steps are fetch, extract, index, bench,"
        " tradeoff, tune, scale, leakage, report"
    )
    assert not out.exists()


def test_a_missing_dataset_is_one_sentence(tmp_path):
    out = tmp_path / "study"
    line = one_error_line(run_main("study", "--data", tmp_path / "nope", "--out", out, *STUDY_OPTIONS, check=False))
    assert line.startswith(f"lookalike study: error: {tmp_path / 'nope'} does not exist")
    assert not out.exists()


def test_an_out_folder_holding_another_study_is_refused_untouched(tiny_collection, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    done = pipeline.UnitRecord("extract clip", "k", "o", (), 1.0, "2026-01-01T00:00:00Z")
    write_state(out, StudyState("/elsewhere/photos", "random", ("clip",), {"extract clip": done}))
    before = (out / STATE_FILE).read_bytes()
    line = one_error_line(run_main("study", "--data", tiny_collection, "--out", out, *STUDY_OPTIONS, check=False))
    assert line == (
        f"lookalike study: error: {out} holds another study (data /elsewhere/photos, weights random, models clip), not"
        f" one of {tiny_collection} with weights random; choose another --out, or delete that folder to start over"
    )
    assert (out / STATE_FILE).read_bytes() == before and sorted(os.listdir(out)) == [STATE_FILE]

    # the same data with other weights is another study too
    write_state(out, StudyState(str(tiny_collection), "pretrained", (MODEL,), {"extract clip": done}))
    line = one_error_line(run_main("study", "--data", tiny_collection, "--out", out, *STUDY_OPTIONS, check=False))
    assert "holds another study" in line and "weights pretrained" in line


def test_a_study_that_finished_nothing_can_be_started_again_otherwise(fake, tiny_collection, tmp_path):
    """e.g. --weights pretrained failed at its first step offline: --weights random may take the folder over."""
    out = tmp_path / "study"
    out.mkdir()
    write_state(out, StudyState(str(tiny_collection), "pretrained", (MODEL,)))
    assert quiet(config_for(tiny_collection, out)).ran == ORDER
    assert read_state(out).weights == "random"


def test_an_unreadable_state_file_is_one_sentence_and_stays(tiny_collection, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / STATE_FILE).write_text("{half a file")
    line = one_error_line(run_main("study", "--data", tiny_collection, "--out", out, *STUDY_OPTIONS, check=False))
    assert f"{out / STATE_FILE} is not a study state file lookalike can read" in line
    assert (out / STATE_FILE).read_text() == "{half a file"


def test_a_folder_that_is_not_a_study_is_refused(tiny_collection, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    line = one_error_line(run_main("study", "--data", tiny_collection, "--out", out, *STUDY_OPTIONS, check=False))
    assert "is not empty and holds no study" in line
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_an_out_folder_inside_the_data_is_refused(tiny_collection, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_collection, data)
    proc = run_main("study", "--data", data, "--out", data / "study", *STUDY_OPTIONS, check=False)
    assert "is inside --data" in one_error_line(proc)
    assert not (data / "study").exists()


def test_unknown_models_and_fetch_without_a_source_are_one_sentence(tiny_collection, tmp_path):
    out = tmp_path / "study"
    proc = run_main("study", "--data", tiny_collection, "--out", out, "--models", "resnet18,vgg", check=False)
    assert "unknown model 'vgg'" in one_error_line(proc)
    proc = run_main("study", "--data", tiny_collection, "--out", out, "--only", "fetch", check=False)
    assert "there is no fetch step when --data is a folder" in one_error_line(proc)
    assert not out.exists()


def test_offline_tiny_imagenet_is_one_sentence_saying_where_to_put_the_zip(tmp_path, monkeypatch):
    import functools

    from lookalike.data import fetch

    dead = "http://127.0.0.1:9/tiny-imagenet-200.zip"  # the discard port: refused at once, as offline
    monkeypatch.setattr(fetch, "fetch_tiny_imagenet", functools.partial(fetch.fetch_tiny_imagenet, url=dead))
    dest, out = tmp_path / "data", tmp_path / "study"
    proc = run_main(
        "study", "--data", "tiny-imagenet", "--dest", dest, "--out", out, "--weights", "random", check=False
    )
    line = one_error_line(proc)
    assert line.startswith(f"lookalike study: error: step fetch failed: download from {dead} failed")
    assert f"put the zip at {dest / 'tiny-imagenet-200.zip'} and rerun" in line
    assert re.search(r"^ +1\. fetch +~ *[\d.]+ (s|min)", proc.stdout, re.M)  # the plan came first
    assert read_state(out).units == {}


def test_the_plan_for_tiny_imagenet_matches_the_readme(tmp_path, monkeypatch):
    """At the reference machine's speed, the plan's estimate for tiny-ImageNet × 3 models is the README's figure."""
    monkeypatch.setattr(pipeline.estimate, "calibrate", lambda: pipeline.estimate.REFERENCE)
    config = StudyConfig(data="tiny-imagenet", out=tmp_path / "study", dest=str(tmp_path / "data"), weights="random")
    study = pipeline.Study(config, echo=lambda line: None)
    rows = study.plan()
    assert [r.unit.id for r in rows][:4] == ["fetch", "extract resnet18", "extract mobilenet", "extract clip"]
    hours = sum(r.seconds for r in rows) / 3600
    assert 2.25 <= hours <= 2.75, hours
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "about 2½ hours" in readme
    scale = next(r for r in rows if r.unit.id == "scale resnet18")
    assert scale.seconds == pytest.approx(pipeline.estimate.scale_seconds((100_000, 1_000_000), 512))


@pytest.mark.slow
def test_the_demo_collection_is_fetched_into_the_study(tmp_path):
    out = tmp_path / "study"
    proc = run_main("study", "--data", "demo", "--out", out, "--weights", "random", "--only", "fetch")
    assert "1 step(s) run" in proc.stdout
    assert len(list((out / "data" / "train").glob("*/images/*.JPEG"))) == 1800
    assert len(list((out / "data" / "val" / "images").glob("*.JPEG"))) == 200
    assert list(read_state(out).units) == ["fetch"]
    again = run_main("study", "--data", "demo", "--out", out, "--weights", "random", "--only", "fetch")
    assert "1 step(s) run" in again.stdout  # --only runs it again: the collection is there, so it returns at once


@pytest.mark.slow
def test_auto_weights_fall_back_to_random_once_and_say_so(tiny_collection, tmp_path, monkeypatch):
    from lookalike.embed import extract as extraction
    from lookalike.errors import WeightsUnavailableError

    real, asked = extraction.extract, []

    def offline(config, progress=True):
        asked.append(config.weights)
        if config.weights == "pretrained":
            raise WeightsUnavailableError("no pretrained weights on this machine\nsecond line")
        return real(config, progress=progress)

    monkeypatch.setattr(extraction, "extract", offline)
    config = config_for(tiny_collection, tmp_path / "study", weights="auto", image_size=32, backend="torch")
    config = dataclasses.replace(config, precision="fp32")
    lines: list[str] = []
    assert run_study(config, only="extract", echo=lines.append).ran == [f"extract {MODEL}"]
    assert asked == ["pretrained", "random"]
    assert any("pretrained weights unavailable (no pretrained weights on this machine)" in line for line in lines)
    assert any("RANDOM weights" in line and "NOT" in line for line in lines)
    gallery = lookalike.open_gallery(config.out / "galleries" / MODEL)
    assert gallery.manifest.weights.kind == "random"
    # the gallery fell back once: a rerun keeps it random rather than trying (and re-embedding) again
    asked.clear()
    quiet(config, only="extract")
    assert asked == ["random"]


# --- the report's pieces ---


def test_markdown_pieces_become_escaped_html():
    assert inline("a `<b>` and **bold** & more") == "a <code>&lt;b&gt;</code> and <strong>bold</strong> &amp; more"
    table = markdown_table(["| a | n |", "|---|---:|", "| x<y | 1.5 |"], "t")
    assert table == (
        "<table id='t'><thead><tr><th>a</th><th>n</th></tr></thead><tbody><tr><td>x&lt;y</td><td class=num>1.5</td>"
        "</tr></tbody></table>"
    )
    assert markdown_list(["- one", "  - two", "- three"]) == "<ul><li>one</li><ul><li>two</li></ul><li>three</li></ul>"


@pytest.mark.slow
def test_leakage_examples_are_shown_as_pictures(planted):
    from lookalike.gallery import open_gallery
    from lookalike.study.htmlreport import THUMB_PX, examples_html
    from lookalike.study.leakage import check_leakage

    gallery = open_gallery(planted.gallery)
    page = examples_html("resnet18", check_leakage(gallery), gallery)
    planted_pairs = {(c.original, c.copy) for c in planted.copies if c.held_out}
    shown = set(re.findall(r"<code>([^<]+)</code> ↔ <code>([^<]+)</code>", page))
    assert shown == planted_pairs and len(shown) == 4  # two identical files, two re-encoded copies
    thumbs = re.findall(r'<img class="thumb" alt="([^"]+)" src="data:image/jpeg;base64,([^"]+)">', page)
    assert [alt for alt, _ in thumbs] == [
        name for pair in re.findall(r"<code>([^<]+)</code> ↔ <code>([^<]+)</code>", page) for name in pair
    ]
    for alt, data in thumbs:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im, Image.open(planted.root / alt) as original:
            assert im.format == "JPEG" and max(im.size) <= THUMB_PX
            assert im.size[0] / im.size[1] == pytest.approx(original.size[0] / original.size[1], rel=0.05)


def test_the_package_is_callable_and_still_a_package():
    assert callable(lookalike.study) and lookalike.study.__name__ == "lookalike.study"
    from lookalike.study import metrics

    assert lookalike.study.metrics is metrics


# --- the real study, end to end ---


def result_json(out: Path, name: str) -> dict:
    return json.loads((out / MODEL / name).read_text())


@pytest.mark.slow
def test_the_whole_study_in_one_command(tiny_study, tiny_collection):
    out, stdout = tiny_study.out, tiny_study.stdout
    # the plan first, with an estimate per step, then progress across the steps
    assert re.search(r"estimates: this machine multiplies float32 matrices at \d+ GFLOP/s", stdout)
    for n, unit in enumerate(ORDER, 1):
        assert re.search(rf"^ +{n}\. {unit} +~ *[\d.]+ (s|min|h) +\(new\)", stdout, re.M), unit
    assert stdout.index(" 1. extract resnet18") < stdout.index("[1/8, ~")
    assert re.search(r"\[8/8, ~[^\]]+\] report: done in", stdout)
    assert "8 step(s) run, 0 skipped" in stdout and str(out / "report.html") in stdout
    assert set(read_state(out).units) == set(ORDER)

    # report.md: lookalike report's report of these results, with the tuner's picks
    text = (out / "report.md").read_text()
    assert "by `lookalike study`" in text and "NOT A REAL RESULT" in text and "## The tuner's picks" in text
    assert "from 2k to 4k" in text
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (out / link).is_file(), link

    # report.html: one self-contained file whose numbers are the result files'
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<link" not in page
    for target in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert target.startswith(("data:image/", "#")) or (out / target).is_file(), target[:80]
    images = re.findall(r'<img id="([^"]+)" class="plot" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert [name for name, _ in images] == [f"tradeoff-{MODEL}", "latency-vs-size"]
    for _, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as png:
            assert png.format == "PNG" and png.width >= 600
    banner = re.search(r'<div id="not-real" class="banner".*?</div>', page, re.S).group(0)
    assert "NOT A REAL RESULT" in banner and "RANDOM weights" in banner and "GENERATED data" in banner
    assert "SYNTHETIC rows in the scale sizes 2k, 4k" in banner  # the collection has 100 database rows

    bench = result_json(out, "bench.json")
    brute = next(m for m in bench["methods"] if m["method"] == "brute")
    assert f"<td>brute ms/query, single</td><td class=num>{brute['latency']['single_ms']:.3f}</td>" in page
    assert f"<td>feature dim</td><td class=num>{bench['dim']}</td>" in page
    tune = result_json(out, "tune/tune.json")
    chosen = tune["candidates"][tune["chosen"]]
    assert (
        f"{MODEL}: the tuner picked {chosen['method']}" in page
        and f"finds {100 * tune['test_accuracy']['recall']:.1f}% of the exact top-10" in page
        and f"at {tune['test_latency']['single_ms']:.3f} ms/query" in page
    )
    scale = result_json(out, "scale/scale.json")
    lo, hi = (next(p for p in scale["points"] if p["method"] == "brute" and p["size"] == s) for s in (2000, 4000))
    assert f"brute: search {lo['latency']['single_ms']:.3f} → {hi['latency']['single_ms']:.3f} ms/query single" in page
    assert re.search(r"Versions: [^<]*torch [\d.]+", page) and "Threads: " in page
    state = read_state(out)
    for unit in ORDER[:-1]:  # every step, with the seconds study.json recorded
        assert f"<td>{unit}</td><td class=num>{state.units[unit].seconds:.1f}</td>" in page


@pytest.mark.slow
def test_a_second_run_skips_every_step_quickly(tiny_study, tiny_collection):
    out = tiny_study.out
    before = (out / "report.html").read_bytes(), read_state(out).units
    started = time.perf_counter()
    proc = run_main("study", "--data", tiny_collection, "--out", out, *STUDY_OPTIONS)
    seconds = time.perf_counter() - started
    assert "0 step(s) run, 8 skipped" in proc.stdout and "everything is done" in proc.stdout
    assert len(re.findall(r"^ +\d+\. .* skip +\(done\)", proc.stdout, re.M)) == len(ORDER)
    assert seconds < 10, seconds
    assert ((out / "report.html").read_bytes(), read_state(out).units) == before


@pytest.mark.slow
def test_other_sizes_rerun_only_the_scale_step_and_the_report(tiny_study, tiny_collection, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(tiny_study.out, out)
    lines: list[str] = []
    run = lookalike.study(
        tiny_collection,
        out,
        models=MODEL,
        sizes="2k,3k",
        weights="random",
        image_size=32,
        backend="torch",
        precision="fp32",
        echo=lines.append,
    )
    assert run.ran == [f"scale {MODEL}", "report"] and run.report_html == out / "report.html"
    assert "from 2k to 3k" in (out / "report.md").read_text()
    assert {p["size"] for p in result_json(out, "scale/scale.json")["points"]} == {2000, 3000}


@pytest.mark.slow
def test_results_read_back_equal_the_files(tiny_study):
    """The report is built from the result files: reading one back gives the result that wrote it, field for field."""
    out = tiny_study.out
    for cls, name, derived in (
        (BenchResult, "bench.json", ()),
        (TradeoffResult, "tradeoff/tradeoff.json", ("cheapest",)),
        (TuneResult, "tune/tune.json", ()),
        (Leakage, "leakage.json", ()),
    ):
        data = result_json(out, name)
        loaded = from_dict(cls, data)
        assert json_text(dataclasses.asdict(loaded)) == json_text({k: v for k, v in data.items() if k not in derived})
    tradeoff = from_dict(TradeoffResult, result_json(out, "tradeoff/tradeoff.json"))
    assert type(tradeoff.points[0]).__name__ == "Point" and isinstance(tradeoff.points[0].recall, float)
