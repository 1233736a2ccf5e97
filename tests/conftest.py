"""Shared test setup: never touch the network, and stay within the 2 CPU cores of the test machines."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402  (after the environment: transformers reads it at import)

torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread beats two (no sync overhead, no fight with subprocesses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PRETRAINING_FIELDS = (
    "loss",
    "reconstruction_loss",
    "supervised_loss",
    "logits",
    "reconstruction",
    "embeddings",
    "mask",
    "pixel_mask",
)


def assert_same_pretraining_outputs(a, b):
    """Two ``...ForPreTraining`` outputs hold identical tensors in every field (save/load round trips)."""
    for field in PRETRAINING_FIELDS:
        first, second = getattr(a, field), getattr(b, field)
        if first is None or second is None:
            assert first is None and second is None, field
        else:
            assert torch.equal(first, second), field


CIFAR10 = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def cifar10_pixels():
    """CIFAR-10 pixels flattened, float32: ``((X_train (5000, 3072), y), (X_test (1000, 3072), y))``."""
    if not CIFAR10.exists():
        pytest.skip(f"CIFAR-10 parquet files not found at {CIFAR10}")
    import numpy as np

    from hf_recperc.images import images_to_array, load_image_dataset

    data = load_image_dataset(str(CIFAR10), max_train_samples=5000, max_eval_samples=1000)
    arrays = []
    for split in (data.train, data.validation):
        X = torch.from_numpy(images_to_array(split, data.image_column)).flatten(1)
        arrays.append((X, torch.as_tensor(np.asarray(split[data.label_column]))))
    return tuple(arrays)


def assert_same_metric_results(result: dict, expected: dict, tol: float) -> None:
    """Same keys; floats within ``tol`` (absolute), everything else equal."""
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert result[key] == pytest.approx(value, abs=tol), key
        else:
            assert result[key] == value, key


# transformers' vendored test mixins are imported by tests/test_transformers_conformance.py, not collected.
collect_ignore = ["transformers_testers"]


# The tiny MAE configuration (8 x 8 px, 2 channels, 16 patches) the model tests share.
TINY_MAE = dict(
    image_size=8,
    patch_size=2,
    num_channels=2,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)
