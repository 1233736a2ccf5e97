"""Streamed rows shared out to (process, worker) pairs without overlap, in an order no worker count changes.

How a ``--streaming`` run over local parquet files reads its rows (docs/data_path.md):

* **Units.** A parquet row group (:class:`Unit`) is the smallest piece a reader fetches alone. With
  ``max_train_samples`` the last unit used is cut short.
* **Epoch order.** The units are permuted by ``(seed, epoch)``; a unit's rows are permuted by
  ``(seed, epoch, unit)`` when it is read. Laid end to end they form the epoch's sequence of ``N`` rows.
* **Processes.** Process ``p`` of ``P`` owns rows ``[p N', (p + 1) N')`` of that sequence (``N' = N // P``) and
  makes ``T = N' // batch_size`` batches of it, so every process steps the same number of times and no row is
  read twice; it reads about ``1/P`` of the bytes (plus the units that straddle a boundary).
* **Lanes.** A process's rows are cut into ``L`` contiguous lanes (``--stream_lanes``); batch ``b`` is the next
  batch of lane ``b % L``, after a shuffle buffer of that lane seeded by ``(seed, epoch, process, lane)``.
* **Workers.** Worker ``w`` of ``W`` (``W`` divides ``L``) makes the batches ``b0 + w, b0 + w + W, ...``, hence
  only the lanes ``l = b0 + w (mod W)``: it reads only their units. ``DataLoader`` hands batches out round robin,
  worker by worker, so the batches and their order are those of ``W = 0``, whatever ``W``.
* **Resume.** The position is ``(epoch, b0)``. A lane replays its shuffle buffer up to the batches already made,
  reading (never decoding) their rows.

Same seed, same batches whatever the worker count; a worker count that does not divide the lanes is refused.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .datasets import LabelEncoder
from .decode import decode_pixels, unreadable_image

__all__ = [
    "Unit",
    "parquet_units",
    "LanePlan",
    "UnitReader",
    "LaneStream",
    "RaiseWorkerErrors",
    "READ_STATS",
    "lane_stream",
]

logger = logging.getLogger(__name__)

# Bytes and rows this process has read from parquet (column chunks, compressed), for measurements and tests.
READ_STATS = {"bytes": 0, "rows": 0, "units": 0}


@dataclass(frozen=True)
class Unit:
    """Rows ``[start, stop)`` of one row group of a parquet file.

    Attributes:
        file: the parquet file.
        row_group: the row group's index in the file.
        start, stop: the rows of the group used (the whole group unless cut by ``max_train_samples``).
        first_row: the split's row id of the group's row 0 (rows counted over the files in order).
        file_row: the file's row number of the group's row 0 (for error messages).
        num_bytes: compressed bytes of the group's column chunks that are read.
    """

    file: str
    row_group: int
    start: int
    stop: int
    first_row: int
    file_row: int
    num_bytes: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def parquet_units(files: list[str], columns: list[str], max_rows: int | None = None) -> list[Unit]:
    """The row groups of ``files`` in reading order (metadata only: no data is read), cut at ``max_rows`` rows."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    units, first_row = [], 0
    for file in files:
        metadata = pq.ParquetFile(file).metadata
        names = [metadata.schema.column(i).path.split(".")[0] for i in range(metadata.num_columns)]
        file_row = 0
        for group in range(metadata.num_row_groups):
            if max_rows is not None and first_row >= max_rows:
                return units
            chunk = metadata.row_group(group)
            rows = chunk.num_rows if max_rows is None else min(chunk.num_rows, max_rows - first_row)
            size = sum(
                chunk.column(i).total_compressed_size for i in range(chunk.num_columns) if names[i] in columns
            )
            units.append(Unit(file, group, 0, rows, first_row, file_row, size))
            first_row, file_row = first_row + rows, file_row + chunk.num_rows
    return units


class LanePlan:
    """Which rows each (process, lane) reads in an epoch, and in which order; pure arithmetic, no I/O.

    Args:
        units: the split's :class:`Unit` list (:func:`parquet_units`).
        seed: the run's seed.
        num_processes, num_lanes: ``P`` and ``L`` of the module's description.
        batch_size: rows per batch of one process.
    """

    def __init__(self, units: list[Unit], seed: int, num_processes: int, num_lanes: int, batch_size: int):
        self.units, self.seed = units, seed
        self.num_processes, self.num_lanes, self.batch_size = num_processes, num_lanes, batch_size
        self.num_rows = sum(unit.rows for unit in units)
        self.batches_per_epoch = (self.num_rows // num_processes) // batch_size

    def lane_batches(self, lane: int) -> int:
        """Batches lane ``lane`` makes per epoch: those ``b < T`` with ``b % L == lane``."""
        return len(range(lane, self.batches_per_epoch, self.num_lanes))

    def unit_order(self, epoch: int) -> np.ndarray:
        """`(U,)` indices of :attr:`units` in the epoch's order."""
        return np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.units))

    def row_order(self, epoch: int, unit: int) -> np.ndarray:
        """`(rows,)` the order of unit ``unit``'s rows in the epoch (the same for every reader of it)."""
        return np.random.default_rng([self.seed, epoch, 1, unit]).permutation(self.units[unit].rows)

    def lane_slices(self, epoch: int, process: int, lane: int) -> list[tuple[int, int, int]]:
        """``(unit, begin, end)`` pieces (positions in the unit's epoch order) that lane ``lane`` of process
        ``process`` reads, in order: ``lane_batches(lane) * batch_size`` rows in all."""
        sizes = [self.lane_batches(k) * self.batch_size for k in range(self.num_lanes)]
        begin = process * (self.num_rows // self.num_processes) + sum(sizes[:lane])
        end = begin + sizes[lane]
        pieces, offset = [], 0
        for unit in self.unit_order(epoch).tolist():
            rows = self.units[unit].rows
            low, high = max(begin, offset), min(end, offset + rows)
            if low < high:
                pieces.append((unit, low - offset, high - offset))
            offset += rows
            if offset >= end:
                break
        return pieces

    def batches_of_worker(self, worker: int, num_workers: int, first_batch: int) -> list[int]:
        """The batch indices ``first_batch + worker + k * num_workers`` (``< T``) that worker ``worker`` makes."""
        return list(range(first_batch + worker, self.batches_per_epoch, max(num_workers, 1)))


class UnitReader:
    """Reads units' image and label columns (a few recent units kept: lanes of one worker often share one)."""

    def __init__(self, columns: list[str], keep: int = 2):
        self.columns, self.keep = columns, keep
        self.cache: OrderedDict[tuple[str, int], dict[str, list]] = OrderedDict()

    def read(self, unit: Unit) -> dict[str, list]:
        """``{column: values}`` of the unit's rows ``[start, stop)`` of its row group."""
        key = (unit.file, unit.row_group)
        if key not in self.cache:
            import pyarrow.parquet as pq  # noqa: PLC0415

            table = pq.ParquetFile(unit.file).read_row_group(unit.row_group, columns=self.columns)
            self.cache[key] = {name: table.column(name).to_pylist() for name in self.columns}
            READ_STATS["bytes"] += unit.num_bytes
            READ_STATS["rows"] += table.num_rows
            READ_STATS["units"] += 1
            while len(self.cache) > self.keep:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        group = self.cache[key]
        return {name: values[unit.start : unit.stop] for name, values in group.items()}


def _lane_records(plan: LanePlan, reader: UnitReader, epoch: int, process: int, lane: int, buffer_size: int):
    """The lane's rows in order: ``(image value, label, row id, unit)``, through a seeded shuffle buffer."""
    image_column, label_column = reader.columns
    rng = np.random.default_rng([plan.seed, epoch, 2, process, lane])
    buffer: list[tuple] = []
    for unit, begin, end in plan.lane_slices(epoch, process, lane):
        columns = reader.read(plan.units[unit])
        for position in plan.row_order(epoch, unit)[begin:end].tolist():
            record = (columns[image_column][position], columns[label_column][position], unit, position)
            if len(buffer) < buffer_size:
                buffer.append(record)
                continue
            slot = int(rng.integers(buffer_size))
            yield buffer[slot]
            buffer[slot] = record
    order = rng.permutation(len(buffer)).tolist()
    yield from (buffer[i] for i in order)


class LaneStream(torch.utils.data.IterableDataset):
    """One process's batches of an epoch of local parquet files: ``{"pixels": uint8 (B, C, S, S), "labels": (B,),
    "rows": (B,)}`` (``rows``: the split's row ids), made by up to ``L`` workers (module description).

    Args:
        plan: the :class:`LanePlan` (units, seed, processes, lanes, batch size).
        process_index: this process.
        image_column, label_column: the columns read.
        decode: ``(value, unit, row) -> (C, S, S) uint8`` array; raises a one-line ``ValueError`` naming the row and
            file of an unreadable image.
        buffer_size: rows of each lane's shuffle buffer.

    Attributes:
        augment: ``None``, or ``(batch, epoch, batch_in_epoch) -> batch`` run on each batch in the worker that
            makes it (:class:`hf_recperc.images.pipeline.WorkerAugmentation`: the training step's augmentation).
    """

    def __init__(
        self, plan: LanePlan, process_index: int, image_column, label_column, decode, buffer_size: int
    ):
        self.plan, self.process_index = plan, process_index
        self.columns, self.decode = [image_column, label_column], decode
        self.buffer_size = max(1, buffer_size)
        self.epoch, self.skip = 0, 0
        self.augment = None

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def set_position(self, epoch: int, batches_done: int) -> None:
        """Iterate epoch ``epoch`` from its batch ``batches_done`` (a resumed run)."""
        self.epoch, self.skip = epoch, batches_done

    def _batches(self, lane_iterators: dict, reader: UnitReader, lane: int):
        """The lane's record iterator, advanced past the batches made before the resume point."""
        if lane not in lane_iterators:
            records = _lane_records(self.plan, reader, self.epoch, self.process_index, lane, self.buffer_size)
            done = len(range(lane, self.skip, self.plan.num_lanes)) * self.plan.batch_size
            for _ in range(done):  # read, never decoded
                next(records)
            lane_iterators[lane] = records
        return lane_iterators[lane]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, lanes = UnitReader(self.columns), {}
        for batch in self.plan.batches_of_worker(worker, workers, self.skip):
            records = self._batches(lanes, reader, batch % self.plan.num_lanes)
            rows = [next(records) for _ in range(self.plan.batch_size)]
            try:
                pixels = np.stack([self.decode(value, unit, position) for value, _, unit, position in rows])
            except ValueError as err:  # one line in the main process, not a worker's traceback
                yield {"error": str(err)}
                return
            ids = [self.plan.units[unit].first_row + position for _, _, unit, position in rows]
            made = {
                "pixels": torch.from_numpy(pixels),
                "labels": torch.from_numpy(self.decode.labels([label for _, label, _, _ in rows])),
                "rows": torch.as_tensor(ids, dtype=torch.long),
            }
            yield made if self.augment is None else self.augment(made, self.epoch, batch)


class RaiseWorkerErrors:
    """A loader whose batches may be ``{"error": message}`` (from a worker): raises that one-line ``ValueError``
    in the main process instead of torch's multi-line worker traceback."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if "error" in batch:
                raise ValueError(batch["error"])
            yield batch


class UnitDecoder:
    """``(value, unit, position) -> (C, S, S)`` uint8 of a :class:`LaneStream` row
    (:func:`hf_recperc.images.decode.decode_pixels`); an unreadable image is a one-line ``ValueError`` naming its
    row in its parquet file. Picklable, for workers; ``labels`` encodes a batch's labels."""

    def __init__(self, units, image_column: str, num_channels: int, image_size: int, label_names):
        self.units, self.image_column = units, image_column
        self.num_channels, self.image_size = num_channels, image_size
        self.labels = LabelEncoder(label_names)

    def __call__(self, value, unit: int, position: int) -> np.ndarray:
        info = self.units[unit]
        row = info.file_row + info.start + position
        try:
            return decode_pixels(value, row, self.image_column, self.num_channels, self.image_size)[0]
        except ValueError as err:
            if err.__cause__ is None:  # not an unreadable image
                raise
            raise unreadable_image(value, row, self.image_column, err.__cause__, repr(info.file)) from err


def lane_stream(
    data, config, batch_size: int, seed: int, buffer_size: int, lanes: int, accelerator
) -> LaneStream:
    """This process's :class:`LaneStream` over the local parquet files of ``data``
    (:class:`~hf_recperc.images.sources.StreamData`): row groups shared out to (process, worker) pairs, batches
    independent of the worker count; the run's shuffle buffer is shared by the lanes."""
    columns = [data.image_column, data.label_column]
    units = parquet_units(data.files["train"], columns, data.num_train_rows)
    plan = LanePlan(units, seed, accelerator.num_processes, lanes, batch_size)
    decode = UnitDecoder(units, data.image_column, config.num_channels, config.image_size, data.label_names)
    return LaneStream(plan, accelerator.process_index, *columns, decode, max(1, buffer_size // lanes))
