"""Where every file the package writes goes through: atomic writes and the one guarded output folder.

* :mod:`.atomic`: a file appears whole or not at all (bytes, text, JSON, ``.npy``/``.npz``, ``torch.save``, any
  serialiser through :func:`~.atomic.atomic_path`); partial files of dead processes are cleaned;
* :mod:`.output_dir`: :class:`OutputDirectory`, the folder of one command (trainer, report, alignment, the
  experiments, the metric's Space layout), checked before work, locked, published as a set with a manifest, never
  overwriting a file of the user's (docs/design.md, "reliability").
"""

from .atomic import (
    atomic_path,
    clean_partials,
    copy_file,
    prepare_cache_dir,
    save_npy,
    save_npz,
    save_torch,
    write_bytes,
    write_json,
    write_text,
)
from .output_dir import MANIFEST, OutputDirectory, Outputs, file_output, json_marker, manifest_name

__all__ = [
    "MANIFEST",
    "OutputDirectory",
    "Outputs",
    "atomic_path",
    "clean_partials",
    "copy_file",
    "file_output",
    "json_marker",
    "manifest_name",
    "prepare_cache_dir",
    "save_npy",
    "save_npz",
    "save_torch",
    "write_bytes",
    "write_json",
    "write_text",
]
