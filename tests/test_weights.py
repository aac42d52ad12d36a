"""Weights identity: a cached file must be the published one, and a gallery's query model the one it was extracted
with."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from lookalike.embed.models import load_model, verify_hash_prefix, verify_hf_blob
from lookalike.embed.query import QueryEmbedder
from lookalike.errors import LookalikeError, WeightsUnavailableError
from lookalike.gallery import open_gallery


def test_random_weights_at_the_torch_hub_cache_path_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub.get_dir() → <TORCH_HOME>/hub
    impostor = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    impostor.parent.mkdir(parents=True)
    torch.save(load_model("resnet18", "random", seed=3).module.state_dict(), impostor)
    with pytest.raises(
        WeightsUnavailableError, match=r"resnet18-f37072fd\.pth are not the published file.*delete or replace"
    ):
        load_model("resnet18", "pretrained")


def test_hash_prefix_check_returns_the_full_sha256(tmp_path):
    payload = b"some weights" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    good = tmp_path / f"model-{digest[:8]}.pth"
    good.write_bytes(payload)
    assert verify_hash_prefix(good) == digest
    bad = tmp_path / f"model-{'0' * 8 if not digest.startswith('0' * 8) else 'f' * 8}.pth"
    bad.write_bytes(payload)
    with pytest.raises(WeightsUnavailableError, match=str(bad.name)):
        verify_hash_prefix(bad)


def test_hugging_face_blob_is_checked_against_its_name(tmp_path):
    payload = b"clip weights"
    digest = hashlib.sha256(payload).hexdigest()
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    (blobs / digest).write_bytes(payload)
    (snapshot / "open_clip_model.safetensors").symlink_to(blobs / digest)
    assert verify_hf_blob(snapshot / "open_clip_model.safetensors") == digest
    (blobs / digest).write_bytes(b"tampered")
    with pytest.raises(WeightsUnavailableError, match="not the published file"):
        verify_hf_blob(snapshot / "open_clip_model.safetensors")


@pytest.mark.slow
def test_a_weights_file_gallery_refuses_queries_when_the_file_changed(tmp_path, tiny_gallery):
    weights = tmp_path / "mine.pt"
    torch.save(load_model("resnet18", "random", image_size=32, seed=11).module.state_dict(), weights)
    recorded = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert load_model("resnet18", str(weights), image_size=32).weights.sha256 == recorded  # the full sha256 is stored

    gallery_dir = tmp_path / "g"
    shutil.copytree(tiny_gallery, gallery_dir)
    manifest = json.loads((gallery_dir / "manifest.json").read_text())
    manifest["model"]["weights"] = {"kind": "file", "source": str(weights), "sha256": recorded, "seed": None}
    (gallery_dir / "manifest.json").write_text(json.dumps(manifest))
    assert QueryEmbedder(open_gallery(gallery_dir)).embedder.weights.sha256 == recorded

    # same path, other weights
    torch.save(load_model("resnet18", "random", image_size=32, seed=12).module.state_dict(), weights)
    with pytest.raises(
        LookalikeError, match=r"mine\.pt.*not the ones .* was extracted with.*restore that file or re-extract"
    ):
        QueryEmbedder(open_gallery(gallery_dir))


@pytest.mark.parametrize("kept", [True, False])
def test_random_weights_are_the_seeds_draw_and_each_caller_gets_its_own_copy(kept):
    """Random weights, kept and copied (`keep_random_draws`, as this suite runs) or drawn each time (the default): each
    load equals an independent fresh draw from the seed, changing one caller's network leaves the next load as drawn,
    and torch's generator is left where the draw leaves it."""
    import torchvision

    from lookalike.embed.models import keep_random_draws

    keep_random_draws(kept)
    try:
        torch.manual_seed(11)
        fresh = torchvision.models.resnet18()
        after_draw = torch.rand(4)
        first = load_model("resnet18", "random", image_size=32, seed=11)
        assert torch.equal(torch.rand(4), after_draw)
        with torch.no_grad():
            for p in first.module.parameters():
                p.add_(1.0)
        second = load_model("resnet18", "random", image_size=32, seed=11)
        assert torch.equal(torch.rand(4), after_draw)
    finally:
        keep_random_draws()
    expected = {k: v for k, v in fresh.state_dict().items() if not k.startswith("fc.")}
    got = second.module.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert not torch.equal(first.module.state_dict()["conv1.weight"], got["conv1.weight"])


def test_the_weights_digest_is_remembered_only_while_the_tensors_are_unchanged():
    """`module_digest` against sha256 computed here over the same tensors, before and after an in-place change and a
    replaced parameter: a remembered digest never outlives the weights it was computed from."""
    from lookalike.embed.models import module_digest

    def independent(module: torch.nn.Module) -> str:
        h = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode() + tensor.numpy().tobytes())
        return h.hexdigest()

    module = load_model("resnet18", "random", image_size=32, seed=12).module
    first = module_digest(module)
    assert first == independent(module) == module_digest(module)
    with torch.no_grad():
        module.layer1[0].conv1.weight.mul_(2.0)
    assert module_digest(module) == independent(module) != first
    module.fc = torch.nn.Linear(512, 3)  # a new tensor in the state
    assert module_digest(module) == independent(module)
