"""Shared test setup: never touch the network, and stay within the 2 CPU cores of the test machines."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402  (after the environment: transformers reads it at import)

torch.set_num_threads(2)
