"""Loading a model folder someone handed us without running code from it.

A ``pytorch_model.bin`` / ``.pth`` file is a pickle: ``torch.load(weights_only=False)`` (or ``pickle.load``) of it
runs whatever the file says. transformers (5.x) and timm (recent 1.0.x) load such files with
``weights_only=True``, torch's restricted unpickler that rebuilds tensors and plain containers only; older timm
releases in our supported range did not. :func:`weights_only_loading` makes every ``torch.load`` reached through
them weights-only whatever the library version passes (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), and turns any
loading failure into a one-line ``ValueError`` naming the argument. ``trust_remote_code=True`` is the exception the
user asks for: it imports the folder's Python files by design.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

__all__ = ["weights_only_loading"]

_FORCE, _FORCE_NOT = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def weights_only_loading(argument: str, name: str):
    """Within the block, ``torch.load`` unpickles tensors and plain containers only, and an error of the loader
    becomes ``ValueError("<argument>: could not load <name> (...)")`` on one line.

    Args:
        argument: the argument the user passed ``name`` with, e.g. ``"model_name_or_path"``.
        name: the Hub id or path being loaded.
    """
    saved = {key: os.environ.get(key) for key in (_FORCE, _FORCE_NOT)}
    os.environ[_FORCE] = "1"
    os.environ.pop(_FORCE_NOT, None)  # both set is an error in torch; ours wins while loading
    try:
        yield
    except Exception as err:  # an unpickling refusal, a damaged safetensors header, missing weights...
        if isinstance(err, ValueError) and str(err).startswith(f"{argument}:"):
            raise  # already ours
        message = " ".join(f"{type(err).__name__}: {err}".split())
        raise ValueError(f"{argument}: could not load {name!r} ({message[:500]})") from err
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
