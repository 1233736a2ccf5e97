"""The perception report's feature cache: pooled features stored once, read back without loading the model.

``perception_report(..., feature_cache=DIR)`` (``recperc-report --feature_cache DIR``) keeps the pooled features
of every layer x pooling it extracts, per split, in an *entry* of ``DIR``. A later report on the same model and the
same rows, with other subspaces, ``k`` or monitors, reads them and never constructs the model; it feeds the
monitors the same blocks of rows as an extraction (:func:`replay_split`), so its numbers equal an uncached run's
exactly (docs/report.md, "Feature cache").

An entry is named by the SHA-256 of its key (:func:`cache_key`), which holds

* the model's identity: a Hub model's commit (its ``revision``), a local folder's content hash (weights, configs,
  image-processor config, remote code), a built module's weights and config (and, with no ``image_processor`` given,
  where its processor is loaded from);
* the image processor given as an argument (its settings) and ``image_size``;
* the data's fingerprint: source, columns, label names, how validation was made (``ImageData.split``: carve, seed,
  fraction) and, per split, the row count and a content hash of the exact rows read (image bytes, or the image
  file's bytes, and labels);
* how features were extracted: the torch / transformers / timm versions, ``mixed_precision``, the device type and the
  stored dtype (float32).

Changing any of them gives another entry, so a stale entry is never read. Layer, pooling and split name the files
inside the entry. Every file is written atomically (:mod:`hf_recperc.publish.atomic`): safetensors for tensors
(never pickle) and JSON for the key and the model's description, so a half-written entry is never read; the cache
folder holds only ``features-<hash>`` folders that this module names, and files of its own inside them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..images import ImageData
from ..monitors import EVAL, TRAIN, MonitorBatch, layer_feature, parse_layers
from ..publish import atomic_path, prepare_cache_dir, write_json
from ..results import TOKENS
from ..validation import hub_offline
from .extract import TIMM_PREFIXES, WEIGHT_SUFFIXES, resolve_poolings

__all__ = [
    "CACHE_FORMAT",
    "CachedFeatures",
    "FeatureCache",
    "FeatureRecorder",
    "RecordingSource",
    "cache_key",
    "data_fingerprint",
    "model_identity",
    "replay_batches",
]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3  # bump when the layout or the meaning of a key field changes
ENTRY_PREFIX = "features-"
KEY_FILE = "key.json"
MODEL_FILE = "model.json"
HASH_CHUNK = 1 << 20
# Files of a model folder that decide its features; report/run outputs written into the folder (report.json,
# results.json, README.md, figures) are left out so that writing a report there keeps the entry valid.
_MODEL_FILE_SUFFIXES = (*WEIGHT_SUFFIXES, ".pth", ".pt", ".py")


# ----------------------------------------------------------------------------------------------- identities


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _directory_identity(path: Path) -> dict:
    """A local model folder: the SHA-256 of every file that decides its features (weights, ``*config*.json``,
    ``*.index.json``, remote-code ``.py``)."""
    files = {}
    for file in sorted(path.iterdir()):
        decides = file.suffix in _MODEL_FILE_SUFFIXES or (
            file.suffix == ".json" and ("config" in file.name or file.name.endswith(".index.json"))
        )
        if decides and file.is_file() and not file.name.startswith("."):
            files[file.name] = _file_sha256(file)
    return {"kind": "directory", "files": files}


def _hub_revision(repo_id: str) -> str | None:
    """The commit a Hub model resolves to now: the Hub's answer online, the cached ``refs`` offline (what
    ``from_pretrained`` would load); ``None`` when neither is known."""
    try:
        if hub_offline():
            from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

            found = try_to_load_from_cache(repo_id, "config.json")
            return Path(found).parent.name if isinstance(found, str) else None  # .../snapshots/<commit>/
        from huggingface_hub import HfApi  # noqa: PLC0415

        return HfApi().model_info(repo_id).sha
    except Exception as err:  # unknown id, no network: no identity, so no cache (never a guessed one)
        logger.info("feature_cache: no revision for %s (%s)", repo_id, type(err).__name__)
        return None


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().to("cpu").contiguous()
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()  # any dtype (bf16 too), bit for bit


def _module_identity(module: torch.nn.Module) -> dict:
    """A built module: its class, config and every tensor of its state (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    config = getattr(module, "config", None)
    to_json = getattr(config, "to_json_string", None)
    return {
        "kind": "module",
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "config": to_json(use_diff=False) if callable(to_json) else None,
        "state_sha256": digest.hexdigest(),
    }


def _module_processor_source(module: torch.nn.Module) -> dict | None:
    """Where :func:`~hf_recperc.report.extract.load_backbone` takes a built module's image processor from when none
    is given: a timm model's ``pretrained_cfg``, or the folder / Hub repository of its ``name_or_path`` (hashed like
    a model folder, or its revision); ``None`` when that cannot be told."""
    pretrained_cfg = getattr(module, "pretrained_cfg", None)
    if pretrained_cfg is not None and hasattr(module, "forward_intermediates"):
        return {"kind": "timm_cfg", "cfg": json.dumps(pretrained_cfg, sort_keys=True, default=str)}
    source = str(getattr(module, "name_or_path", "") or "")
    if not source:
        return {"kind": "none"}  # load_backbone refuses such a module without a processor
    identity = model_identity(source)
    return None if identity is None else {"kind": "name_or_path", **identity}


def model_identity(model) -> dict | None:
    """What decides a model's weights, known before loading it; ``None`` when it cannot be told (``timm:<name>``,
    whose pretrained weights are only resolved by creating the model, or a Hub id without a known revision)."""
    if isinstance(model, torch.nn.Module):
        return _module_identity(model)
    name = str(model)
    path = Path(name).expanduser()
    if path.is_dir():
        return _directory_identity(path)
    if name.startswith("timm:"):
        return None
    repo_id = name.removeprefix("hf-hub:") if name.startswith(TIMM_PREFIXES) else name
    revision = _hub_revision(repo_id)
    return None if revision is None else {"kind": "hub", "repo_id": repo_id, "revision": revision}


def _processor_identity(image_processor) -> str | None | bool:
    """An image processor given as an argument, by its settings (``False``: it cannot be described)."""
    if image_processor is None:
        return None
    to_json = getattr(image_processor, "to_json_string", None)
    if callable(to_json):
        return to_json()
    config = getattr(image_processor, "config", None)  # TimmProcessor
    if isinstance(config, dict):
        return json.dumps(config, sort_keys=True, default=str)
    return False


def _image_bytes(value) -> bytes:
    """One image cell as stored (``{"bytes", "path"}`` of a ``datasets.Image``; the file's bytes when only the path
    is stored), in a form that hashes the content."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return json.dumps(value, default=str).encode()


def _rows_fingerprint(split, image_column: str, label_column: str) -> dict:
    """The exact rows a split holds: their count and a SHA-256 of every image's bytes and every label, in order
    (``select``ed rows and carves included: the Arrow view is read as the loader reads it)."""
    digest = hashlib.sha256()
    for batch in split.with_format("arrow").iter(
        batch_size=2048
    ):  # pa.Table slices, through any row selection
        for value in batch.column(image_column).to_pylist():
            data = _image_bytes(value)
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        digest.update(json.dumps(batch.column(label_column).to_pylist(), default=str).encode())
    return {"rows": len(split), "sha256": digest.hexdigest()}


def data_fingerprint(data: ImageData) -> dict:
    """The rows a report reads: source, columns, label names, how validation was made, and each split's rows."""
    return {
        "source": data.source,
        "image_column": data.image_column,
        "label_column": data.label_column,
        "label_names": list(data.label_names),
        "split": data.split,
        TRAIN: _rows_fingerprint(data.train, data.image_column, data.label_column),
        EVAL: _rows_fingerprint(data.validation, data.image_column, data.label_column),
    }


def cache_key(
    model_id: dict,
    data: ImageData,
    *,
    image_processor=None,
    image_size: int | None = None,
    mixed_precision: str = "no",
    device: torch.device | str = "cpu",
) -> dict | None:
    """Every field that decides the pooled features (module docstring); ``None`` when one cannot be described."""
    processor = _processor_identity(image_processor)
    if processor is False:
        return None
    return {
        "format": CACHE_FORMAT,
        "model": model_id,
        "image_processor": processor,
        "image_size": image_size,
        "data": data_fingerprint(data),
        "extraction": {
            "versions": _extraction_versions(),
            "mixed_precision": mixed_precision,
            "device": torch.device(device).type,
            "dtype": "float32",  # pooled_features casts every feature to float32
        },
    }


def _extraction_versions() -> dict[str, str | None]:
    """The libraries whose kernels and model code compute the features: an upgrade may change them."""
    from importlib import metadata  # noqa: PLC0415

    versions = {}
    for package in ("torch", "transformers", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------- record, replay


class FeatureRecorder:
    """A monitor-shaped object that keeps every pooled row it is fed, per split (what the cache stores).

    It takes part in the extraction (``update``) only; it measures nothing."""

    def __init__(self):
        self.rows: dict[str, dict[str, list[torch.Tensor]]] = {TRAIN: {}, EVAL: {}}
        self.labels: dict[str, list[torch.Tensor]] = {TRAIN: [], EVAL: []}

    def update(self, batch: MonitorBatch) -> None:
        for name, rows in batch.features.items():
            self.rows[batch.split].setdefault(name, []).append(rows.detach().to("cpu"))  # (n, D) float32
        self.labels[batch.split].append(batch.labels.detach().to("cpu"))

    def split(self, split: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({feature: (N, D)}, labels (N,))`` of one split."""
        features = {name: torch.cat(rows) for name, rows in self.rows[split].items()}
        return features, torch.cat(self.labels[split]) if self.labels[split] else torch.empty(
            0, dtype=torch.long
        )


def replay_batches(
    features: dict[str, torch.Tensor],
    labels: torch.Tensor,
    split: str,
    batch_size: int,
    update_rows: int,
    device: torch.device,
) -> Iterator[MonitorBatch]:
    """Cached rows in the blocks an extraction hands the monitors, so that every sum runs in the same order and the
    numbers are the uncached ones exactly: an extraction flushes once ``update_rows`` rows are pending, i.e. every
    ``ceil(update_rows / batch_size)`` batches (``hf_recperc.report.run.split_batches``).

    Args:
        features: ``{feature: (N, D) float32}``; labels: ``(N,)`` class ids.
    """
    block = math.ceil(update_rows / batch_size) * batch_size
    for start in range(0, len(labels), block):
        rows = {name: values[start : start + block].to(device) for name, values in features.items()}
        yield MonitorBatch(split, labels=labels[start : start + block].to(device), features=rows)


class RecordingSource:
    """A :class:`~hf_recperc.monitors.FeatureSource` that passes ``source``'s batches on and keeps their rows in
    ``recorder`` (what :meth:`CacheEntry.store` writes)."""

    def __init__(self, source, recorder: FeatureRecorder):
        self.source, self.recorder = source, recorder

    @property
    def seen(self) -> int:
        return self.source.seen

    def batches(self, features: set[str]) -> Iterator[MonitorBatch]:
        for batch in self.source.batches(features):
            self.recorder.update(batch)
            yield batch


@dataclass
class CachedFeatures:
    """A cache hit: what the report would learn from the model (layers, poolings, dimensions, provenance, the
    image resize) and every requested feature of both splits."""

    layer_ids: list[int]
    poolings: list[str]
    dims: dict[str, int]
    provenance: dict
    num_hidden_layers: int
    resized: dict | None = None
    splits: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]] = field(default_factory=dict)

    def source(self, batch_size: int, update_rows: int, device: torch.device) -> ReplaySource:
        """The hit as the report's feature source (both splits replayed, :func:`replay_batches`)."""
        return ReplaySource(self, batch_size, update_rows, device)


class ReplaySource:
    """A :class:`~hf_recperc.monitors.FeatureSource` over cached rows; ``seen`` counts the rows replayed."""

    def __init__(self, cached: CachedFeatures, batch_size: int, update_rows: int, device: torch.device):
        self.cached, self.batch_size, self.update_rows, self.device = cached, batch_size, update_rows, device
        self.seen = 0

    def batches(self, features: set[str]) -> Iterator[MonitorBatch]:
        for split in (TRAIN, EVAL):
            rows, labels = self.cached.splits[split]
            for batch in replay_batches(rows, labels, split, self.batch_size, self.update_rows, self.device):
                self.seen += len(batch.labels)
                yield batch


# --------------------------------------------------------------------------------------------------- the cache


def _file_name(feature: str, split: str) -> str:
    """``layer_3/mean``, ``train`` -> ``train.layer_3.mean.safetensors`` (names we derive, nothing else)."""
    return f"{split}.{feature.replace('/', '.')}.safetensors"


def _requested_features(layer_ids: Sequence[int], poolings: Sequence[str], num_layers: int) -> list[str]:
    """The features an extraction gives, in its order (``pooled_features``: ``pooler`` at the last layer only)."""
    return [layer_feature(i, p) for i in layer_ids for p in poolings if p != "pooler" or i == num_layers]


class FeatureCache:
    """A folder of feature entries (see the module docstring).

    Args:
        directory: the cache folder; created when first written. A path that exists and is not a folder is refused
            (``ValueError`` naming ``feature_cache``), before any work.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(
                f"feature_cache: {str(directory)!r} is a file; expected a directory (or a path to create) where "
                "the report keeps pooled features"
            )
        existing = self.directory
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(
                f"feature_cache: {str(directory)!r} is not writable (no write permission on {existing})"
            )

    def entry(self, model, data: ImageData, **settings) -> CacheEntry | None:
        """The entry of ``model`` on ``data`` with the extraction ``settings`` (:func:`cache_key`), or ``None``
        (logged) when the model or its processor cannot be identified before loading: then nothing is cached."""
        model_id = model_identity(model)
        if (
            model_id is not None
            and isinstance(model, torch.nn.Module)
            and settings.get("image_processor") is None
        ):
            source = _module_processor_source(model)  # the processor decides the pixels, hence the features
            model_id = None if source is None else {**model_id, "processor_source": source}
        key = None if model_id is None else cache_key(model_id, data, **settings)
        if key is None:
            logger.warning(
                "feature_cache: %s cannot be identified before loading it (a timm:<name>, a Hub id without a known "
                "revision, or an image processor without settings), so its features are not cached; save the "
                "model to a folder and pass that", model if isinstance(model, str) else type(model).__name__,
            )  # fmt: skip
            return None
        name = model if isinstance(model, str) else type(model).__name__  # as Backbone.name
        return CacheEntry(self.directory / f"{ENTRY_PREFIX}{_key_hash(key)}", key, name)


class CacheEntry:
    """One key's folder: ``key.json`` (the full key, checked on every read), ``model.json`` (layer count, default
    poolings, provenance) and one safetensors file per split x feature (``features`` `(N, D)` float32, ``labels``
    `(N,)` int64)."""

    def __init__(self, path: Path, key: dict, name: str):
        self.path, self.key, self.key_hash, self.name = path, key, _key_hash(key), name

    def _ours(self) -> bool:
        """Whether the folder is this key's (a folder of the same name holding another key, or a file, is not:
        it is neither read nor written)."""
        try:
            stored = json.loads((self.path / KEY_FILE).read_text())
        except (OSError, ValueError):
            return False
        return json.dumps(stored, sort_keys=True, default=str) == json.dumps(
            self.key, sort_keys=True, default=str
        )

    def _unclaimed(self) -> bool:
        """An entry folder without ``key.json`` holding nothing but dead writers' partial files (a writer killed
        before its key was written): this key may take it."""
        return not (self.path / KEY_FILE).exists() and all(
            p.name.startswith(".") for p in self.path.iterdir()
        )

    def lookup(self, layers, poolings: Sequence[str] | None, data: ImageData) -> CachedFeatures | None:
        """Every requested feature of both splits, or ``None`` (a miss) when one is absent or unreadable."""
        if not self._ours():
            return None
        try:
            model = json.loads((self.path / MODEL_FILE).read_text())
            num_layers = int(model["num_hidden_layers"])
            layer_ids = parse_layers(layers, num_layers, argument="layers")
            poolings = resolve_poolings(
                poolings, model["default_poolings"], model["pooler_by_default"], num_layers, layer_ids
            )
            provenance = {**model["provenance"], "name_or_path": self.name}  # the same weights, named as now
            resized = model["resized"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not stored yet, or a bad layer: the model's own path says why
        if "pooler" in poolings and num_layers not in layer_ids:
            return None  # refused by the model's path (choose_features), with its message
        hit = CachedFeatures(layer_ids, poolings, {}, provenance, num_layers, resized)
        expected_rows = {TRAIN: len(data.train), EVAL: len(data.validation)}
        for split in (TRAIN, EVAL):
            features, labels = {}, None
            for feature in _requested_features(layer_ids, poolings, num_layers):
                loaded = self._read(feature, split, expected_rows[split])
                if loaded is None:
                    return None
                features[feature], labels = loaded
                hit.dims[feature] = int(loaded[0].shape[-1])  # D, for pooled (N, D) and tokens (N, T, D)
            hit.splits[split] = (features, labels)
        for split in (TRAIN, EVAL):
            for feature in hit.splits[split][0]:
                logger.info("features for %s %s read from cache %s", feature, split, self.path)
        return hit

    def _read(self, feature: str, split: str, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        from safetensors import SafetensorError  # noqa: PLC0415
        from safetensors.torch import safe_open  # noqa: PLC0415

        path = self.path / _file_name(feature, split)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in ("features", "labels")}
        except (OSError, SafetensorError, RuntimeError, ValueError) as err:
            logger.warning("feature_cache: %s is unreadable (%s); extracting again", path, type(err).__name__)
            return None
        features, labels = tensors["features"], tensors["labels"]
        if (
            meta.get("key") != self.key_hash or meta.get("feature") != feature or meta.get("split") != split
            or features.dtype != torch.float32 or features.ndim != (3 if feature.endswith(f"/{TOKENS}") else 2)
            or features.shape[0] != rows
            or labels.shape != (rows,)
        ):  # fmt: skip
            logger.warning("feature_cache: %s does not hold what its name says; extracting again", path)
            return None
        return features, labels

    def store(
        self,
        recorder: FeatureRecorder,
        *,
        num_hidden_layers: int,
        default_poolings: Sequence[str],
        pooler_by_default: bool,
        resized: dict | None,
        provenance: dict,
    ) -> None:
        """Write the recorded features (one atomic file each), then ``model.json``; an entry folder holding another
        key (or a file in its place) is left alone."""
        if self.path.exists() and not (self.path.is_dir() and (self._ours() or self._unclaimed())):
            logger.warning("feature_cache: %s is not this report's entry; features not stored", self.path)
            return
        from safetensors.torch import save_file  # noqa: PLC0415

        prepare_cache_dir(self.path)  # also removes the partial files of dead writers
        if not (self.path / KEY_FILE).exists():
            write_json(self.path / KEY_FILE, self.key, indent=1)
        for split in (TRAIN, EVAL):
            features, labels = recorder.split(split)
            for feature, rows in features.items():
                meta = {"key": self.key_hash, "feature": feature, "split": split, "format": str(CACHE_FORMAT)}
                tensors = {"features": rows.contiguous(), "labels": labels.to(torch.long).contiguous()}
                with atomic_path(self.path / _file_name(feature, split)) as partial:
                    save_file(tensors, str(partial), metadata=meta)
                logger.info("features for %s %s stored in cache %s", feature, split, self.path)
        model = {
            "num_hidden_layers": num_hidden_layers,
            "default_poolings": list(default_poolings),
            "pooler_by_default": pooler_by_default,
            "resized": resized,
            "provenance": provenance,
        }
        write_json(self.path / MODEL_FILE, model, indent=1)
