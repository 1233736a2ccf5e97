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
)


def assert_same_pretraining_outputs(a, b):
    """Two ``...ForPreTraining`` outputs hold identical tensors in every field (save/load round trips)."""
    for field in PRETRAINING_FIELDS:
        assert torch.equal(a[field], b[field]), field
