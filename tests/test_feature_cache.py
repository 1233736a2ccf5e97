"""The perception report's feature cache (hf_recperc/report/cache.py): a second report on cached features runs
without constructing the model and gives the uncached numbers exactly; other weights or other data never reuse an
entry; a half-written entry is never read."""

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import hf_recperc.report.run as report_run
from hf_recperc.report import perception_report

pytestmark = pytest.mark.usefixtures("one_thread")

FIRST = dict(subspaces=["top:0.9", "bottom:0.2", "all"], knn_k=20)
SECOND = dict(subspaces=["top:0.5", "bottom:0.5", "first:3"], knn_k=5, monitors=["subspace", "knn"])
DIGITS = dict(dataset="digits", max_train_samples=240, max_eval_samples=120)


def _save_vit(path: Path, seed: int) -> str:
    import transformers as tf

    torch.manual_seed(seed)
    config = tf.ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    tf.ViTModel(config).save_pretrained(path)
    tf.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return str(path)


@pytest.fixture
def vit(tmp_path):
    return _save_vit(tmp_path / "vit", seed=0)


@pytest.fixture
def loads(monkeypatch):
    """Counts the models the report constructs (``load_backbone`` calls)."""
    calls = []
    original = report_run.load_backbone

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("model_name_or_path"))
        return original(*args, **kwargs)

    monkeypatch.setattr(report_run, "load_backbone", counting)
    return calls


def _forbid_model_construction(monkeypatch):
    from transformers import AutoModel

    def refuse(*args, **kwargs):
        raise AssertionError("the model was constructed although its features are cached")

    monkeypatch.setattr(report_run, "load_backbone", refuse)
    monkeypatch.setattr(AutoModel, "from_pretrained", refuse)


def _report(model, out: Path, cache: Path | None, settings: dict, **kwargs) -> dict:
    arguments = {"layers": "all", "device": "cpu", **DIGITS, **settings, **kwargs}
    perception_report(model, output_dir=out, feature_cache=cache, **arguments)
    return json.loads((out / "report.json").read_text())  # what the user reads, not the in-memory dict


def test_second_report_reads_cached_features_without_the_model_and_equals_an_uncached_one(
    vit, tmp_path, monkeypatch, caplog
):
    """Feature cache (issue 18, acceptance 2): other subspaces, k and monitors on cached features give the numbers of
    an uncached run exactly, and never construct the model."""
    cache = tmp_path / "cache"
    first = _report(vit, tmp_path / "first", cache, FIRST)
    assert first["settings"]["feature_cache"]["hit"] is False
    with monkeypatch.context() as patched, caplog.at_level(logging.INFO, logger="hf_recperc.report.cache"):
        _forbid_model_construction(patched)
        cached = _report(vit, tmp_path / "cached", cache, SECOND)
    uncached = _report(vit, tmp_path / "uncached", None, SECOND)
    assert cached["settings"]["feature_cache"]["hit"] is True
    assert cached["metrics"] == uncached["metrics"]  # exactly, value for value
    assert cached["features"] == uncached["features"] and cached["finding"] == uncached["finding"]
    assert cached["accuracy_curves"] == uncached["accuracy_curves"]
    assert cached["layers"] == uncached["layers"] == [1, 2, 3] and cached["poolings"] == ["cls", "mean"]
    assert cached["model"] == uncached["model"]  # the provenance comes from the entry
    read = [r.getMessage() for r in caplog.records if "read from cache" in r.getMessage()]
    assert len(read) == 12 and read[0].startswith("features for layer_1/cls train read from cache ")
    # data only: safetensors tensors and JSON, nothing that unpickles
    suffixes = {p.suffix for p in cache.rglob("*") if p.is_file()}
    assert suffixes == {".safetensors", ".json"}, suffixes
    assert [p.name for p in cache.iterdir()] == [Path(first["settings"]["feature_cache"]["entry"]).name]


def test_other_weights_in_the_same_folder_never_reuse_the_entry(vit, tmp_path, loads):
    """Feature cache: re-saving other weights under the same path is a new entry (the folder's content hash), and its
    report equals an uncached report of the new weights."""
    cache = tmp_path / "cache"
    old = _report(vit, tmp_path / "old", cache, FIRST)
    _save_vit(Path(vit), seed=1)
    new = _report(vit, tmp_path / "new", cache, FIRST)
    uncached = _report(vit, tmp_path / "uncached", None, FIRST)
    assert len(loads) == 3  # the second report loaded the model again
    assert new["settings"]["feature_cache"]["hit"] is False
    assert new["metrics"] == uncached["metrics"] != old["metrics"]
    assert len(list(cache.iterdir())) == 2


def test_other_rows_never_reuse_the_entry(vit, tmp_path, loads):
    """Feature cache: other rows of the same data (more training samples, another carve seed) are other entries."""
    cache = tmp_path / "cache"
    _report(vit, tmp_path / "a", cache, FIRST)
    more = _report(vit, tmp_path / "b", cache, FIRST, max_train_samples=200)
    seed = _report(vit, tmp_path / "c", cache, FIRST, data_kwargs={"seed": 1})
    assert more["data"]["num_train"] == 200 and not more["settings"]["feature_cache"]["hit"]
    assert not seed["settings"]["feature_cache"]["hit"]
    assert len(loads) == 3 and len(list(cache.iterdir())) == 3


def _write_parquet(folder: Path, seed: int) -> str:
    """A 300-image grayscale train split (random 8x8 images, 3 classes) as train.parquet."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L") for _ in range(300)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    table = datasets.Dataset.from_dict(
        {"image": images, "label": [i % 3 for i in range(300)]}, features=features
    )
    folder.mkdir(exist_ok=True)
    table.to_parquet(str(folder / "train.parquet"))
    return str(folder)


def test_other_file_content_never_reuses_the_entry(vit, tmp_path, loads):
    """Feature cache: a data file rewritten with other images (same path, rows and labels) is another entry."""
    cache, data = tmp_path / "cache", tmp_path / "data"
    settings = dict(FIRST, dataset=_write_parquet(data, seed=0))
    kwargs = dict(layers="last", device="cpu", feature_cache=cache, **settings)
    first = perception_report(vit, **kwargs)
    _write_parquet(data, seed=1)
    second = perception_report(vit, **kwargs)
    assert not second["settings"]["feature_cache"]["hit"] and len(loads) == 2
    assert second["metrics"] != first["metrics"]
    again = perception_report(vit, **kwargs)
    assert again["settings"]["feature_cache"]["hit"] and again["metrics"] == second["metrics"]


def test_a_half_written_or_damaged_entry_is_never_read(vit, tmp_path, loads, caplog):
    """Feature cache: a missing file (a run killed while storing), a partial file of a dead writer and a truncated
    file are misses: the model is loaded again, the numbers are the uncached ones, and the entry is rewritten."""
    cache = tmp_path / "cache"
    settings = dict(FIRST, layers="last", device="cpu", feature_cache=cache, **DIGITS)
    reference = perception_report(vit, **settings)
    entry = Path(reference["settings"]["feature_cache"]["entry"])
    stored = sorted(p.name for p in entry.iterdir())
    (entry / "eval.layer_3.mean.safetensors").unlink()
    (entry / ".eval.layer_3.mean.tmp-deadhost-999999.safetensors").write_bytes(b"half")
    missing = perception_report(vit, **settings)
    assert not missing["settings"]["feature_cache"]["hit"] and missing["metrics"] == reference["metrics"]
    assert sorted(p.name for p in entry.iterdir() if not p.name.startswith(".")) == stored
    damaged = entry / "train.layer_3.cls.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="hf_recperc.report.cache"):
        truncated = perception_report(vit, **settings)
    assert not truncated["settings"]["feature_cache"]["hit"] and truncated["metrics"] == reference["metrics"]
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert len(loads) == 3
    assert perception_report(vit, **settings)["settings"]["feature_cache"]["hit"]  # rewritten whole


def test_an_entry_folder_of_another_key_is_neither_read_nor_overwritten(vit, tmp_path, loads):
    """Feature cache: a folder under an entry's name that holds another key (or a user's files) is left as it is."""
    cache = tmp_path / "cache"
    settings = dict(FIRST, layers="last", device="cpu", feature_cache=cache, **DIGITS)
    entry = Path(perception_report(vit, **settings)["settings"]["feature_cache"]["entry"])
    key = json.loads((entry / "key.json").read_text())
    key["model"] = {"kind": "hub", "repo_id": "someone/else", "revision": "0" * 40}
    (entry / "key.json").write_text(json.dumps(key))
    before = {p.name: p.read_bytes() for p in entry.iterdir()}
    report = perception_report(vit, **settings)
    assert not report["settings"]["feature_cache"]["hit"] and len(loads) == 2
    assert {p.name: p.read_bytes() for p in entry.iterdir()} == before


def test_a_built_module_is_identified_by_its_weights(vit, tmp_path):
    """Feature cache: a built module's entry is keyed by its tensors; changing one weight is another entry."""
    from transformers import AutoImageProcessor, ViTModel

    module, processor = ViTModel.from_pretrained(vit), AutoImageProcessor.from_pretrained(vit)
    settings = dict(
        FIRST, layers="last", device="cpu", feature_cache=tmp_path / "cache", image_processor=processor
    )
    first = perception_report(module, **DIGITS, **settings)
    assert perception_report(module, **DIGITS, **settings)["settings"]["feature_cache"]["hit"]
    with torch.no_grad():
        module.embeddings.patch_embeddings.projection.weight.mul_(2.0)  # hidden states skip the final norm
    changed = perception_report(module, **DIGITS, **settings)
    assert not changed["settings"]["feature_cache"]["hit"] and changed["metrics"] != first["metrics"]


def test_a_built_module_without_a_processor_is_keyed_by_the_processor_it_loads(vit, tmp_path):
    """Feature cache (review): a built module given without ``image_processor`` takes the processor of its
    ``name_or_path`` folder; changing that processor's settings served the first run's features before."""
    from transformers import ViTModel

    settings = dict(FIRST, layers="last", device="cpu", feature_cache=tmp_path / "cache")
    first = perception_report(ViTModel.from_pretrained(vit), **DIGITS, **settings)
    assert perception_report(ViTModel.from_pretrained(vit), **DIGITS, **settings)["settings"][
        "feature_cache"
    ]["hit"]
    config = Path(vit) / "preprocessor_config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "image_mean": [0.2] * 3, "image_std": [0.3] * 3})
    )
    changed = perception_report(ViTModel.from_pretrained(vit), **DIGITS, **settings)
    uncached = perception_report(
        ViTModel.from_pretrained(vit), **DIGITS, **{**settings, "feature_cache": None}
    )
    assert not changed["settings"]["feature_cache"]["hit"]
    assert changed["metrics"] == uncached["metrics"] != first["metrics"]


def test_an_entry_folder_left_without_its_key_is_filled(vit, tmp_path):
    """Feature cache (review): a writer killed before ``key.json`` left a folder that no later report filled."""
    settings = dict(FIRST, layers="last", device="cpu", feature_cache=tmp_path / "cache")
    entry = Path(perception_report(vit, **DIGITS, **settings)["settings"]["feature_cache"]["entry"])
    for file in entry.iterdir():
        file.unlink()
    (entry / ".train.layer_3.cls.tmp-host-1.safetensors").write_bytes(
        b"half"
    )  # the dead writer's partial file
    assert not perception_report(vit, **DIGITS, **settings)["settings"]["feature_cache"]["hit"]
    assert perception_report(vit, **DIGITS, **settings)["settings"]["feature_cache"]["hit"]
