"""The text tower on a measured backend and precision (issue 24 §4), recorded beside the gallery and reused.

References are independent of the code under test: open_clip's own `encode_text` over the full
77-token context, in fp32 torch, at the seed the towers were built with. NaN is injected (a chosen
backend's output replaced before it reaches `normalise`), never expected from one CPU's numerics.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from lookalike.embed import text as text_module
from lookalike.embed import text_choice
from lookalike.embed.backends import Choice, normalise
from lookalike.embed.calibrate import MIN_COSINE, REFERENCE
from lookalike.embed.models import load_towers
from lookalike.embed.query import QueryEmbedder
from lookalike.embed.text import TextEmbedder
from lookalike.embed.text_choice import (
    SAMPLE_TEXTS,
    TextInference,
    calibrate_text,
    conditions,
    read_record,
    record_paths,
    write_record,
)
from lookalike.gallery import open_gallery
from lookalike.gallery.manifest import Candidate, Inference

CLIP_ARCH = "ViT-B-32-quickgelu"
# not among SAMPLE_TEXTS (what the calibration measured on), of lengths from 1 to the full context
HELD_OUT = ("x", "a lighthouse on a cliff in a storm", "car " * 75, "three red apples and a knife on a wooden table")


@pytest.fixture(autouse=True)
def fewer_sample_texts(monkeypatch):
    """The calibration's measurement over 2 of its sample texts (the shortest and the longest), and int8's statistics
    pass over 8 generated texts (its own cache entry, shared by this module's tests): the same choices and the same
    checks, in far less time for a module that calibrates a dozen times."""
    import lookalike.embed.calibrate as calibrate_module
    import lookalike.embed.text_choice as text_choice
    from lookalike.embed import quantise

    texts = sorted(text_choice.SAMPLE_TEXTS, key=len)
    monkeypatch.setattr(text_choice, "SAMPLE_TEXTS", (texts[0], texts[-1]))
    monkeypatch.setattr(quantise, "QUANTISE_TEXTS", 8)
    # no candidate is dropped for its speed on a one-text probe: the suite runs in parallel workers, so a probe may
    # stall, and these tests check each candidate's numerics and the record, not which is fastest
    monkeypatch.setattr(calibrate_module, "PRUNE_FACTOR", float("inf"))


@pytest.fixture(scope="module")
def towers():
    """CLIP's towers, RANDOM weights (seed 0): for tests of numerics and choices only."""
    return load_towers("clip", "random", image_size=32, seed=0)


@pytest.fixture(scope="module")
def reference(towers):
    """open_clip's own fp32 text embeddings of HELD_OUT at seed 0, without lookalike: (n, 512) unit rows."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(CLIP_ARCH, pretrained=None, force_image_size=32).eval()
    tokens = open_clip.get_tokenizer(CLIP_ARCH)(list(HELD_OUT))
    with torch.no_grad():
        v = model.encode_text(tokens).float()
    return (v / v.norm(dim=-1, keepdim=True)).numpy()


def fresh(towers) -> TextEmbedder:
    """A text embedder with no backend built yet, over the module's text tower (cheap: the network is shared)."""
    return TextEmbedder("clip", towers.text.tower, "cpu", towers.text.weights)


def held_out_tokens(text: TextEmbedder) -> torch.Tensor:
    return torch.cat([text.tokenize(t) for t in HELD_OUT])


class NaNText:
    """A text backend whose output is NaN for every other row, as a partly broken kernel would give."""

    def __init__(self, run):
        self.run, self.choice = run, run.choice

    def __call__(self, tokens: torch.Tensor) -> np.ndarray:
        out = self.run(tokens).copy()
        out[::2] = np.nan
        return normalise(out, self.choice, unit="texts")


def poison(monkeypatch, target: Choice) -> None:
    """Every TextEmbedder's backend for `target` returns NaN."""
    original = TextEmbedder.backend

    def backend(self, choice, threads=None, streams=1):
        run = original(self, choice, threads, streams)
        return NaNText(run) if choice == target else run

    monkeypatch.setattr(TextEmbedder, "backend", backend)


# --- the measured choice ---


@pytest.mark.slow
def test_every_kept_text_candidate_and_the_choice_stay_within_cosine_of_open_clip(
    monkeypatch, towers, reference, model_cache
):
    text = fresh(towers)
    inference = calibrate_text(text)
    by = {Choice(c.backend, c.precision): c for c in inference.candidates}
    # OpenVINO converts and runs here (it is installed): its fp32 model, with a dynamic sequence length, is measured
    # (kept or, on a busy machine, not timed further for its speed: either way checked against the reference below)
    openvino = Choice("openvino", "fp32")
    assert not by[openvino].note.startswith("unavailable"), by[openvino].note
    chosen = Choice(inference.backend, inference.precision)
    assert by[chosen].kept and by[chosen].cosine_min >= MIN_COSINE
    assert "texts/s" in inference.reason or "only candidate" in inference.reason
    tokens = held_out_tokens(text)
    for choice, candidate in by.items():
        if not candidate.kept and choice != openvino:
            continue
        # a batch of mixed lengths (cut at its longest text) and each text alone give the reference's vectors
        batch = text.backend(choice)(tokens)
        alone = np.concatenate([text.backend(choice)(tokens[i : i + 1]) for i in range(len(tokens))])
        for out in (batch, alone):
            cosine = (out * reference).sum(axis=1)
            assert cosine.min() >= MIN_COSINE, (choice, cosine)
    # the converted text model is on disk, in the model cache, and a new embedder loads it without converting
    assert list((model_cache / "openvino").glob(f"{text.text_key}-dynamic-ov*/model.xml"))
    import openvino

    def no_conversion(*args, **kwargs):
        raise AssertionError("the text tower was converted again")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    out = fresh(towers).backend(Choice("openvino", "fp32"))(tokens)
    assert ((out * reference).sum(axis=1) >= MIN_COSINE).all()


@pytest.mark.slow
def test_int8_is_tried_once_the_text_tower_is_quantised(towers):
    text = fresh(towers)
    assert not text.int8_cached()  # this session's cache is empty: auto leaves int8 out and says why
    assert "not quantised yet" in next(c.note for c in calibrate_text(text).candidates if c.precision == "int8")
    requested = calibrate_text(text, backend="openvino", precision="int8")  # as for a gallery extracted with int8
    measured = next(c for c in requested.candidates if c.precision == "int8")
    assert measured.cosine_min is not None and measured.images_per_second  # quantised, run and compared
    assert "generated texts" in measured.note or "cosine min" in measured.note  # how it was made, or why it is poor
    assert fresh(towers).int8_cached()  # cached on disk: a later measurement tries it without quantising
    again = next(c for c in calibrate_text(fresh(towers)).candidates if c.precision == "int8")
    assert again.cosine_min is not None and "not quantised" not in again.note


def test_a_text_candidate_giving_nan_is_rejected_and_the_reason_recorded(monkeypatch, towers):
    poison(monkeypatch, Choice("torch", "bf16"))
    inference = calibrate_text(fresh(towers), backend="torch", precision="auto")
    by = {Choice(c.backend, c.precision): c for c in inference.candidates}
    assert (inference.backend, inference.precision) == ("torch", "fp32")
    rejected = by[Choice("torch", "bf16")]
    assert not rejected.kept and "non-finite output (NaN or inf)" in rejected.note and "texts" in rejected.note


def test_a_requested_text_backend_giving_nan_leaves_torch_fp32_and_says_why(monkeypatch, towers):
    poison(monkeypatch, Choice("torch", "bf16"))
    inference = calibrate_text(fresh(towers), backend="torch", precision="bf16")
    assert (inference.backend, inference.precision) == ("torch", "fp32")
    assert (
        "torch bf16 produced non-finite embeddings" in inference.reason
        and "torch fp32 runs instead" in inference.reason
    )
    assert any(c.precision == "bf16" and "non-finite" in c.note and not c.kept for c in inference.candidates)


def test_a_forced_unavailable_text_backend_is_one_clear_sentence(monkeypatch, caplog, towers):
    monkeypatch.setattr(text_module, "openvino_version", lambda: None)  # as if OpenVINO were not installed
    with caplog.at_level(logging.WARNING):
        inference = calibrate_text(fresh(towers), backend="openvino", precision="fp32")
    assert inference.backend == "torch" and inference.reason.startswith("openvino could not run; ")
    note = next(c.note for c in inference.candidates if c.backend == "openvino")
    assert note == "unavailable: openvino is not installed (pip install openvino)"
    warned = [r.getMessage() for r in caplog.records if "openvino fp32 cannot run here" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "openvino is not installed" in warned[0]


# --- recorded beside the gallery, reused ---


@pytest.fixture
def clip_copy(clip_gallery, tmp_path):
    """A copy of the session's CLIP gallery (extracted with --backend torch --precision fp32), free to write to."""
    out = tmp_path / "clip"
    shutil.copytree(clip_gallery, out)
    for old in (out / "cache").glob("text-inference-*.json"):  # another test's record of the session gallery
        old.unlink()
    return open_gallery(out)


@pytest.mark.slow
def test_the_text_choice_is_recorded_and_reused_without_measuring_again(monkeypatch, clip_copy):
    measured = []
    real = text_choice.calibrate_text
    monkeypatch.setattr(text_choice, "calibrate_text", lambda *a, **k: measured.append(a[1:]) or real(*a, **k))
    first = QueryEmbedder(clip_copy)
    vector, _ = first.embed_text("a red car")
    # the gallery was extracted pinned to torch fp32: its text tower honours the same request
    assert [call[:3] for call in measured] == [("torch", "fp32", None)]
    path = record_paths(clip_copy)[0]
    saved = json.loads(path.read_text())
    assert saved["inference"]["backend"] == "torch" and saved["conditions"]["fingerprint"] == clip_copy.fingerprint
    assert saved["conditions"]["requested"] == {"backend": "torch", "precision": "fp32"}

    # a new process's view: a fresh gallery object and model, the record read and not measured again
    again = QueryEmbedder(open_gallery(clip_copy.path))
    second, _ = again.embed_text("a red car")
    np.testing.assert_allclose(second, vector, rtol=1e-6, atol=1e-7)
    assert len(measured) == 1 and again.text_inference == read_record(clip_copy)
    hits = open_gallery(clip_copy.path).search(text="a red car", k=3)  # the API's searcher reads it as well
    assert len(hits) == 3 and len(measured) == 1
    # other conditions (here: another thread count) are measured again, and recorded
    QueryEmbedder(clip_copy, threads=torch.get_num_threads() + 1).embed_text("a red car")
    assert len(measured) == 2 and read_record(clip_copy).conditions["threads"] == torch.get_num_threads() + 1


@pytest.mark.slow
def test_a_server_measures_again_a_record_that_left_int8_untried(monkeypatch, clip_copy):
    monkeypatch.setattr(text_choice, "requested", lambda gallery: ("auto", "auto"))  # as for an `auto` extraction
    untried = Candidate("openvino", "int8", note=text_choice.INT8_NOT_TRIED)
    written = TextInference(conditions(clip_copy, None), Inference("torch", "fp32", "a CLI query's", (untried,)))
    write_record(clip_copy, written)
    embedder = QueryEmbedder(clip_copy)
    assert embedder.prepare_text(quantise=False) == written  # a query reuses it as it is
    served = QueryEmbedder(open_gallery(clip_copy.path)).prepare_text(quantise=True)  # what the server calls
    int8 = next(c for c in served.inference.candidates if c.precision == "int8")
    assert int8.cosine_min is not None and read_record(clip_copy) == served  # quantised, measured, recorded


@pytest.mark.slow
def test_a_recorded_choice_is_what_queries_run_and_a_nan_query_falls_back(monkeypatch, clip_copy, reference):
    record = TextInference(
        conditions(clip_copy, None), Inference("torch", "bf16", "written by the test"), created="test"
    )
    write_record(clip_copy, record)
    embedder = QueryEmbedder(clip_copy)
    vector, _ = embedder.embed_text(HELD_OUT[1])
    assert embedder.text.choice == Choice("torch", "bf16")  # the record's choice, not the gallery's torch fp32
    assert float(vector[0] @ reference[1]) >= MIN_COSINE  # bf16 autocast on this tower stays within the cosine

    poison(monkeypatch, Choice("torch", "bf16"))
    embedder = QueryEmbedder(open_gallery(clip_copy.path))
    vector, _ = embedder.embed_text(HELD_OUT[1])
    assert np.isfinite(vector).all() and embedder.text.choice == REFERENCE
    assert float(vector[0] @ reference[1]) >= 0.99999  # torch fp32 stood in
    saved = read_record(clip_copy)
    assert (saved.inference.backend, saved.inference.precision) == ("torch", "fp32")
    assert "torch bf16 produced non-finite embeddings" in saved.inference.reason and saved.notes


@pytest.mark.slow
def test_a_recorded_backend_that_cannot_run_here_falls_back_in_one_sentence(monkeypatch, caplog, clip_copy):
    write_record(clip_copy, TextInference(conditions(clip_copy, None), Inference("openvino", "fp32", "by the test")))
    monkeypatch.setattr(text_module, "openvino_version", lambda: None)
    embedder = QueryEmbedder(clip_copy)
    with caplog.at_level(logging.WARNING):
        vector, _ = embedder.embed_text("a red car")
    assert np.isfinite(vector).all() and embedder.text.choice == REFERENCE
    warned = [r.getMessage() for r in caplog.records if "recorded openvino fp32 cannot run here" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "openvino is not installed" in warned[0]


def test_a_gallery_folder_that_cannot_be_written_keeps_the_record_in_the_model_cache(clip_copy, model_cache):
    cache = clip_copy.path / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.write_text("not a folder")  # mkdir and writes under it fail, as in a read-only folder (root ignores modes)
    record = TextInference(conditions(clip_copy, None), Inference("torch", "fp32", "by the test"))
    where = write_record(clip_copy, record)
    assert where is not None and where.is_relative_to(model_cache) and read_record(clip_copy) == record


def test_sample_texts_fit_the_context_and_differ_in_length(towers):
    lengths = [len(towers.text.tower.tokenizer.encode(t)) for t in SAMPLE_TEXTS]
    assert max(lengths) <= towers.text.max_tokens and len(set(lengths[:4])) == 4
