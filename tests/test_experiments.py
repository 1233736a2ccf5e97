"""Tests of hf_recperc.experiments and the E1/E2 scripts (docs/science.md section 3).

Everything runs on the embedded 8x8 digits in seconds; the one CIFAR-10 check is marked ``cifar10`` and
skips when ../shared/data/cifar10 is absent.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_recperc.commands import pca_classification, pca_figure
from hf_recperc.experiments import (
    CLASSIFIERS,
    PRESETS,
    DataArguments,
    TrainConfig,
    build_classifier,
    config_from_preset,
    fit_pixel_pca,
    fraction_grid,
    load_pixel_splits,
    project_images,
    run_projection_experiment,
    train_classifier,
)
from hf_recperc.spectral import PCA

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="module")
def digits():
    return load_pixel_splits(DataArguments(dataset_name=None))


@pytest.fixture(scope="module")
def digits_pca(digits, tmp_path_factory):
    return fit_pixel_pca(digits.train_flat, cache_dir=str(tmp_path_factory.mktemp("cache")))


def _synthetic_images(n=300, shape=(3, 6, 5), seed=0):
    """Rows with a decaying spectrum, so top/bottom subspaces have very different sizes."""
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    mixing = rng.normal(size=(dim, dim)) * (0.7 ** np.arange(dim))[:, None]
    return (rng.normal(size=(n, dim)) @ mixing + 2.0).astype(np.float32), shape


# --- projections ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["top:0.9", "bottom:0.2", "first:3", "last:40", "all"])
def test_project_images_matches_spectral_project(spec):
    flat, shape = _synthetic_images()
    pca = PCA().fit(flat)
    ours = project_images(pca, flat, spec, shape)
    reference = pca.project(flat, spec).numpy().reshape(len(flat), *shape)
    assert ours.shape == (len(flat), *shape) and ours.dtype == np.float32
    # float32 round-off is relative to the input's scale (the complement route subtracts from x itself).
    scale = np.abs(flat - flat.mean(0)).max()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("spec", ["top:0.9", "bottom:0.2", "last:40"])
def test_projection_is_idempotent(spec):
    flat, shape = _synthetic_images()
    pca = PCA().fit(flat)
    once = project_images(pca, flat, spec, shape).reshape(len(flat), -1)
    # Projecting again: add the mean back so the second call's centring is a no-op.
    twice = project_images(pca, once + pca.mean_.numpy().astype(np.float32), spec, shape).reshape(
        len(flat), -1
    )
    np.testing.assert_allclose(twice, once, atol=1e-4 * np.abs(once).max())


@pytest.mark.parametrize("fraction", [0.6, 0.8, 0.9])
def test_top_and_bottom_complements_add_up_to_centred_image(fraction):
    flat, shape = _synthetic_images()
    pca = PCA().fit(flat)
    top = project_images(pca, flat, f"top:{fraction}", shape)
    bottom = project_images(pca, flat, f"bottom:{1 - fraction:.10g}", shape)
    centred = (flat - pca.mean_.numpy()).reshape(len(flat), *shape)
    np.testing.assert_allclose(top + bottom, centred, atol=1e-4 * np.abs(centred).max())
    # and they are orthogonal: no energy in common
    assert abs(float((top * bottom).sum())) < 1e-3 * float((centred**2).sum())
    assert (
        pca.subspace(f"top:{fraction}").numel() + pca.subspace(f"bottom:{1 - fraction:.10g}").numel()
        == flat.shape[1]
    )


def test_bottom_projection_of_digits_keeps_less_energy_than_top(digits, digits_pca):
    top = project_images(digits_pca, digits.train_flat, "top:0.8", digits.image_shape)
    bottom = project_images(digits_pca, digits.train_flat, "bottom:0.2", digits.image_shape)
    energy_ratio = float((bottom**2).sum() / ((top**2).sum() + (bottom**2).sum()))
    assert energy_ratio == pytest.approx(digits_pca.explained_variance("bottom:0.2"), abs=1e-3)


def test_empty_subspace_raises_spectral_error():
    flat, shape = _synthetic_images()
    pca = PCA().fit(flat)
    first_share = float(pca.explained_variance_ratio_[0])
    with pytest.raises(ValueError, match="is empty"):
        project_images(pca, flat, f"top:{first_share / 2:.4f}", shape)


def test_project_images_rejects_wrong_shape():
    flat, shape = _synthetic_images()
    pca = PCA().fit(flat)
    with pytest.raises(ValueError, match="flat: expected shape"):
        project_images(pca, flat[:, :-1], "all", shape)


def test_pca_cache_round_trip(tmp_path, digits):
    first = fit_pixel_pca(digits.train_flat, cache_dir=str(tmp_path))
    files = list((tmp_path / "pca").glob("*.npz"))
    assert len(files) == 1
    second = fit_pixel_pca(digits.train_flat, cache_dir=str(tmp_path))
    assert not hasattr(second, "moments_")  # really read from the cache
    for name in ("mean_", "eigenvalues_", "components_", "explained_variance_ratio_"):
        torch.testing.assert_close(getattr(second, name), getattr(first, name))
    assert second.subspace("bottom:0.2").tolist() == first.subspace("bottom:0.2").tolist()
    # other data -> another cache entry
    fit_pixel_pca(digits.train_flat[:-1], cache_dir=str(tmp_path))
    assert len(list((tmp_path / "pca").glob("*.npz"))) == 2


# --- classifiers and training --------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_classifiers_forward_backward(name, shape):
    model = build_classifier(name, shape, num_labels=7, width=8)
    x = torch.randn(4, *shape)
    logits = model(x)
    assert logits.shape == (4, 7)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_build_classifier_rejects_unknown_name():
    with pytest.raises(ValueError, match="classifier: expected one of"):
        build_classifier("vgg", (3, 8, 8), 10)


@pytest.mark.slow  # end-to-end (subprocesses, seconds to a minute): CI's second step
def test_train_classifier_learns_digits(digits):
    config = TrainConfig(classifier="small_cnn", width=8, epochs=4, batch_size=64, lr=1e-2, augment=False,
                         disable_tqdm=True)  # fmt: skip
    result = train_classifier(
        digits.train_images, digits.train_labels, digits.eval_images, digits.eval_labels, 10, config
    )
    assert result["accuracy"] > 0.6  # chance is 0.1
    assert result["steps"] == 4 * int(np.ceil(len(digits.train_images) / 64))


def test_max_steps_caps_training(digits):
    config = TrainConfig(classifier="mlp", width=16, epochs=50, max_steps=3, batch_size=32, disable_tqdm=True)
    result = train_classifier(
        digits.train_images, digits.train_labels, digits.eval_images, digits.eval_labels, 10, config
    )
    assert result["steps"] == 3 and result["epochs"] < 1


def test_an_epoch_counts_the_batches_that_train(digits):
    """A last batch of one image is skipped (BatchNorm), so it is no step: 5 rows in batches of 2 are 2 steps an
    epoch, and 2 epochs are 4 steps (before, the budget counted 3 an epoch and trained into a third epoch); one
    training row is refused (its only batch would never train: the loop never ended)."""
    config = TrainConfig(classifier="mlp", width=8, epochs=2, batch_size=2, disable_tqdm=True)
    rows = digits.train_images[:5], digits.train_labels[:5]
    result = train_classifier(*rows, digits.eval_images[:8], digits.eval_labels[:8], 10, config)
    assert result["steps"] == 4 and result["epochs"] == 2
    with pytest.raises(ValueError, match="train_images: expected 2 rows or more"):
        train_classifier(rows[0][:1], rows[1][:1], digits.eval_images[:8], digits.eval_labels[:8], 10, config)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"classifier": "x"}, "classifier"), ({"epochs": 0}, "epochs"), ({"max_steps": 0}, "max_steps"),
     ({"lr": 0.0}, "lr"), ({"mixed_precision": "fp8"}, "mixed_precision"), ({"batch_size": 1}, "batch_size")],
)  # fmt: skip
def test_train_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_presets():
    paper, extras = config_from_preset("paper", {"epochs": None, "max_steps": 10})
    assert (paper.classifier, paper.epochs, paper.batch_size, paper.lr, paper.weight_decay) == (
        "resnet9", 50, 512, 1e-3, 1e-3,
    )  # fmt: skip
    assert paper.max_steps == 10 and paper.train_subset is None and "fractions" in extras
    cpu, extras = config_from_preset("cpu", {})
    assert cpu.classifier == "small_cnn" and extras["subspaces"] == ["top:0.9", "bottom:0.2"]
    assert set(PRESETS) == {"cpu", "paper"}
    with pytest.raises(ValueError, match="preset"):
        config_from_preset("gpu", {})


def test_fraction_grid():
    assert fraction_grid([0.2, 0.9]) == ["top:0.2", "bottom:0.2", "top:0.9", "bottom:0.9"]


def test_run_projection_experiment_records(digits, digits_pca):
    config = TrainConfig(
        classifier="mlp", width=32, epochs=2, batch_size=128, train_subset=500, disable_tqdm=True
    )
    seen = []
    records = run_projection_experiment(
        digits, ["top:0.5", "bottom:0.5"], config, pca=digits_pca, on_record=seen.append
    )
    assert seen == records and [r["subspace"] for r in records] == ["top:0.5", "bottom:0.5"]
    for record in records:
        assert record["train_size"] == 500 and record["eval_size"] == len(digits.eval_flat)
        assert record["dims"] == digits_pca.subspace(record["subspace"]).numel()
        assert 0 <= record["accuracy"] <= 1 and record["classifier"] == "mlp"
    assert records[0]["dims"] + records[1]["dims"] == 64
    assert records[0]["explained_variance"] + records[1]["explained_variance"] == pytest.approx(1.0)


def test_run_projection_experiment_empty_subspace(digits, digits_pca):
    config = TrainConfig(classifier="mlp", width=8, epochs=1, disable_tqdm=True)
    tiny = f"top:{float(digits_pca.explained_variance_ratio_[0]) / 2:.4f}"
    with pytest.raises(ValueError, match="is empty"):
        run_projection_experiment(digits, [tiny, "bottom:0.2"], config, pca=digits_pca)
    config.max_steps = 1
    records = run_projection_experiment(digits, [tiny, "bottom:0.2"], config, pca=digits_pca, skip_empty=True)
    assert [r["subspace"] for r in records] == ["bottom:0.2"]


# --- scripts end to end (seconds, on digits) ------------------------------------------------------------


def test_pca_classification_script_on_digits(tmp_path, monkeypatch):
    out = tmp_path / "e2"
    records = pca_classification.run(
        ["--preset", "cpu", "--output_dir", str(out), "--subspaces", "top:0.8", "bottom:0.2", "--epochs", "1",
         "--width", "8", "--train_subset", "300", "--disable_tqdm", "--cache_dir", str(tmp_path / "cache")]
    )  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(records))
    assert [r["subspace"] for r in saved] == ["top:0.8", "bottom:0.2"]
    for key in (
        "fraction",
        "dims",
        "explained_variance",
        "accuracy",
        "classifier",
        "epochs",
        "train_size",
        "seconds",
    ):
        assert key in saved[0]
    assert saved[0]["train_size"] == 300 and saved[0]["epochs"] == 1
    assert (out / "accuracy_vs_variance.png").stat().st_size > 1000


def test_pca_classification_script_paper_preset_smoke_from_json(tmp_path):
    config = {"preset": "paper", "output_dir": str(tmp_path / "e2"), "max_steps": 2, "width": 4,
              "fractions": [0.5, 0.9], "disable_tqdm": True, "max_train_samples": 400, "max_eval_samples": 100,
              "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(config))
    records = pca_classification.run([str(tmp_path / "args.json")])
    assert {r["classifier"] for r in records} == {"resnet9"}
    assert {r["steps"] for r in records} == {2}
    assert {r["subspace"] for r in records} <= {"top:0.5", "bottom:0.5", "top:0.9", "bottom:0.9"}
    assert {"bottom:0.5", "bottom:0.9"} <= {r["subspace"] for r in records}


def test_pca_classification_script_rejects_both_grids(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        pca_classification.run(["--output_dir", str(tmp_path), "--subspaces", "all", "--fractions", "0.5"])


def test_pca_figure_script_on_digits(tmp_path):
    figure = pca_figure.run(["--output", str(tmp_path / "e1.png"), "--num_images", "5", "--subspaces", "top:0.8",
                          "bottom:0.2", "last:3", "--cache_dir", str(tmp_path / "cache")])  # fmt: skip
    assert Path(figure).stat().st_size > 1000
    # an empty top subspace fails with spectral's message
    with pytest.raises(ValueError, match="is empty"):
        pca_figure.run(["--output", str(tmp_path / "e1b.png"), "--subspaces", "top:0.01"])


def test_pick_images_one_per_class_first():
    labels = np.array([3, 3, 1, 2, 1, 3])
    assert pca_figure.pick_images(labels, 4).tolist() == [2, 3, 0, 1]


@pytest.mark.cifar10
@pytest.mark.skipif(not (CIFAR10 / "train.parquet").exists(), reason=f"CIFAR-10 copy not found at {CIFAR10}")
def test_cifar10_subspace_sizes_match_reference():
    """The data README's reference: top:0.9 -> 64 dims (0.899), bottom:0.2 -> 3,055 dims (0.205)."""
    splits = load_pixel_splits(DataArguments(dataset_name=str(CIFAR10), max_eval_samples=10))
    pca = fit_pixel_pca(splits.train_flat)
    assert pca.subspace("top:0.9").numel() == 64
    assert pca.subspace("bottom:0.2").numel() == 3055
    assert pca.explained_variance("top:0.9") == pytest.approx(0.899, abs=1e-3)
    assert pca.explained_variance("bottom:0.2") == pytest.approx(0.205, abs=1e-3)
    projected = project_images(pca, splits.eval_flat, "bottom:0.2", (3, 32, 32))
    assert projected.shape == (10, 3, 32, 32)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_experiment_plots_leave_the_matplotlib_backend_alone():
    # Importing the figure module must not pick a backend for the user (no matplotlib.use at import).
    code = (
        "import matplotlib; matplotlib.use('svg'); import hf_recperc.experiment_plots; "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
