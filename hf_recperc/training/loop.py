"""The Accelerate training loop behind ``accelerate launch scripts/pretrain.py``: :class:`PretrainingRun`.

One run: load data, build the model (hybrid objective ``reconstruction + guidance * probe cross-entropy``,
docs/science.md E3), train with Accelerate (one CPU, one or many GPUs: the same code), evaluate with the
monitors (:mod:`hf_recperc.monitors`) at a fixed cadence, checkpoint, publish and optionally push. See
docs/design.md ("training") for the files written and what each evaluation measures.

Resumption is exact: every random draw of a training step (corruption, MAE masking, augmentation, dropout) comes
from a generator seeded by ``(seed, micro-batch index, process index)``, the data order of each epoch from
``(seed, epoch)``, and the checkpoint stores the step counter and the position in the epoch ourselves
(:class:`~hf_recperc.training.state.TrainerState`), in files that hold no pickle (:mod:`.checkpoint_files`).

Throughput: see docs/design.md ("training"): uint8 store, on-device transforms, no host read per step.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..distributed import run_on_main_process
from ..images.datasets import collate_stored
from ..images.pipeline import derived_seed, step_seed, training_data, training_pipeline
from ..images.sources import load_stream
from ..monitors import EVAL, TRAIN, Monitor, SpectralBands
from ..processing import image_processor_for
from ..results import TRAIN_LOSSES, RunResults, train_key
from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .builders import (
    build_model,
    build_monitors,
    build_optimizer,
    build_schedule,
    optimizer_update,
    resolve_preset,
    seed_global_generators,
    shard_loader,
)
from .checkpoint_files import Trainables
from .checkpointing import (
    checked_resume,
    find_checkpoint,
    load_checkpoint,
    run_defining_args,
    save_checkpoint,
    write_json_atomic,
)
from .environment import check_process_group, no_accelerator_device, run_results, tracker_config
from .evaluation import run_monitors, summary
from .figures import final_figures, history_figures, log_figures, write_figures
from .guard import NonFiniteGuard, NonFiniteLossError, fused_available
from .output_dir import OutputDirectory
from .sharding import full_parameters
from .spectrum_cache import cached_pixel_spectrum, spectrum_key
from .state import TRAINER_STATE, DeviceLossSums, PhaseTimer, TrainerState

__all__ = ["PretrainingRun", "NonFiniteLossError", "RunStopped", "train"]

logger = logging.getLogger("hf_recperc.training")


def train(
    data_args: DataArguments,
    model_args: ModelArguments,
    args: PretrainingArguments,
    monitors: Sequence[Monitor] = (),
) -> dict:
    """Train, evaluate, save (and optionally push) a model; returns the content of ``results.json``.

    ``monitors``: extra :class:`~hf_recperc.monitors.Monitor` objects run at every evaluation beside the ones
    ``args.monitors`` names; their numbers go to ``history.json``, the trackers and ``results.json``.

    Raises:
        ValueError: bad arguments or data, naming the argument.
        NonFiniteLossError: a NaN/inf loss; the checkpoints written before it are kept, no model is written.
        hf_recperc.cards.HubPushError: ``--push_to_hub`` failed; the local output is complete.
        RunStopped: SIGTERM (exit code 143); the message printed on stderr names the checkpoint to resume from.
    """
    run = PretrainingRun(data_args, model_args, args, extra_monitors=monitors)
    try:
        with _stopping_on_sigterm():
            run.setup()
            for _ in run.optimiser_steps():
                pass
            results = run.publish()
            run.push()
    except RunStopped:
        run.close()  # the lock first: the command the message suggests must find output_dir free
        run.report_stop()
        raise
    finally:
        run.close()
    return results


class RunStopped(SystemExit):
    """SIGTERM stopped the run. A ``SystemExit`` with code 143 (128 + SIGTERM, what an unhandled SIGTERM gives), so
    a scheduler still sees a terminated job; :func:`train` releases output_dir's lock and prints where to resume."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


@contextmanager
def _stopping_on_sigterm():
    """Turn SIGTERM into :class:`RunStopped` while the run lasts (main thread only: Python's rule for handlers).
    Raised at once, wherever the run is: checkpoints and the published model are renamed into place whole, so a
    stop mid-write leaves the previous ones (as a SIGKILL would)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise RunStopped()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class PretrainingRun:
    """A training run, one method per step: :meth:`setup`, :meth:`train_step`, :meth:`log`, :meth:`evaluate`,
    :meth:`checkpoint`, :meth:`publish`, :meth:`push`. :func:`train` strings them together."""

    def __init__(self, data_args, model_args, args, extra_monitors: Sequence[Monitor] = ()):
        self.data_args, self.model_args, self.args = data_args, model_args, args
        self.extra_monitors = list(extra_monitors)
        self.output_dir = Path(
            args.output_dir
        ).resolve()  # '.' has no name to build sibling staging dirs from
        self.log_with = None if args.report_to == "none" else args.report_to.split(",")
        self.start_time = time.time()
        self.timer = PhaseTimer()  # seconds per phase, logged at the end (benchmarks/train_throughput.py)

    # ------------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Accelerator, checkpoint to resume, data, model, loaders, optimiser, schedule, monitors, trackers."""
        with self.timer("setup"):
            self._setup()

    def _setup(self) -> None:
        args = self.args
        self.accelerator = Accelerator(
            cpu=no_accelerator_device(),
            mixed_precision=args.mixed_precision,
            dynamo_backend="inductor" if args.torch_compile else None,  # compiled in accelerator.prepare
            # Pinned batches copied without blocking the host: no wait on the GPU's queue at each batch.
            dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=self.log_with,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
        )
        check_process_group(self.accelerator)
        self.all_args = {**asdict(self.data_args), **asdict(self.model_args), **asdict(args)}
        run_on_main_process(self.accelerator, self._prepare_output_dir)
        # The checkpoint to resume and its state, its arguments compared with ours before any data or model.
        resume_dir, self.resumed_state = checked_resume(
            self.accelerator, args, run_defining_args(self.all_args), self.output_dir, self.info
        )
        set_seed(args.seed)  # model initialisation
        self.data = (
            load_stream(self.data_args) if self.data_args.streaming else self.data_args.load(seed=args.seed)
        )
        # Resolved once (it decodes the first image): results.json and publishing read the recorded value.
        self.preset = resolve_preset(self.model_args, self.data)
        self.model = build_model(self.model_args, self.data, self.preset, self.accelerator.device)
        self.image_processor = image_processor_for(self.model.config)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._build_loaders()
        self._build_optimisation()
        self.monitors = build_monitors(args, self.model, self._pixel_spectrum()) + self.extra_monitors
        self._resume(resume_dir)
        self.loss_sums = DeviceLossSums(self.accelerator.device)
        self.guard = NonFiniteGuard(
            self.accelerator, self.optimizer.optimizer, self.defer_non_finite, self.state.step,
            args.gradient_accumulation_steps,
        )  # fmt: skip
        if self.log_with:
            self.accelerator.init_trackers("recperc", config=tracker_config(self.all_args))
        self.info(
            f"training {type(self.model).__name__} ({self.model.num_parameters():,} parameters) on {self.data.source}: "
            f"{self.num_train} train / {len(self.eval_set)} validation images, {self.max_steps} steps, total "
            f"batch {self.total_batch_size}, lr {self.learning_rate:g}, {self.accelerator.num_processes} "
            f"process(es) on {self.accelerator.device}; monitors: {', '.join(m.name for m in self.monitors)}"
        )
        if (
            args.torch_compile
        ):  # accelerate compiles in prepare() (it keeps the mode of the first Accelerator)
            self.info(f"torch.compile (inductor): training model is a {type(self.prepared_model).__name__}")
        self.progress = tqdm(
            total=self.max_steps, initial=self.state.step, disable=not self.accelerator.is_local_main_process
        )
        self.prepared_model.train()

    def _build_loaders(self) -> None:
        """Training loader shuffled by (seed, epoch), full batches only (BatchNorm); this process's own shards of
        the probe's training rows and of the validation split for the monitors."""
        args, accelerator, config, data_args = self.args, self.accelerator, self.model.config, self.data_args
        options = {"num_workers": data_args.dataloader_num_workers, "pin_memory": torch.cuda.is_available()}
        options["collate_fn"] = collate_stored
        # Before the loaders: on a CPU with loader workers, the workers run its training augmentation.
        self.pipeline = training_pipeline(
            config, accelerator.device, data_args, channels_last=args.channels_last
        )
        built = training_data(
            self.data, config, self.image_processor, data_args, args, accelerator, options, self.pipeline
        )
        self.train_set, self.probe_set, self.eval_set, self.train_loader, self.sampler, description = built
        self.num_train = self.data.num_train_rows if data_args.streaming else len(self.train_set)
        self.info(description)
        if self.num_train < args.per_device_train_batch_size * accelerator.num_processes:
            raise ValueError(
                f"per_device_train_batch_size: {args.per_device_train_batch_size} x {accelerator.num_processes} "
                f"process(es) is more than the {self.num_train} training images"
            )
        # The monitors read capped subsets (the first rows): their cost stays a small share of the run.
        self.probe_rows = range(min(len(self.probe_set), args.probe_max_train_samples or len(self.probe_set)))
        self.eval_rows = range(min(len(self.eval_set), args.monitor_max_eval_samples or len(self.eval_set)))
        shard = (accelerator.process_index, accelerator.num_processes, args.per_device_eval_batch_size)
        self.probe_loader = shard_loader(self.probe_set, self.probe_rows, *shard, **options)
        self.eval_loader = shard_loader(self.eval_set, self.eval_rows, *shard, **options)

    def _build_optimisation(self) -> None:
        """AdamW (learning rate optionally scaled with the total batch, MAE's rule), prepared for the distributed
        setup; the schedule counts optimiser steps, so its length does not depend on the number of processes."""
        args, accelerator = self.args, self.accelerator
        self.total_batch_size = (
            args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
        )
        self.learning_rate = (
            args.learning_rate * self.total_batch_size / 256 if args.scale_lr else args.learning_rate
        )
        # The fused AdamW skips a non-finite step on the device (NonFiniteGuard): no host read per step.
        self.defer_non_finite = fused_available(accelerator.device) and args.mixed_precision != "fp16"
        optimizer = build_optimizer(self.model, args, self.learning_rate, fused=self.defer_non_finite)
        if self.data_args.streaming:  # each process reads its own rows of the stream (no dispatching)
            self.prepared_model, self.optimizer = accelerator.prepare(self.model, optimizer)
        else:
            self.prepared_model, self.optimizer, self.train_loader = accelerator.prepare(
                self.model, optimizer, self.train_loader
            )
        self.batches_per_epoch = len(self.train_loader)
        if args.gradient_accumulation_steps > self.batches_per_epoch:
            raise ValueError(
                f"gradient_accumulation_steps: {args.gradient_accumulation_steps} micro-batches per optimiser step "
                f"is more than the {self.batches_per_epoch} batches of an epoch; use at most {self.batches_per_epoch} "
                "or a smaller --per_device_train_batch_size"
            )
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / args.gradient_accumulation_steps)
        self.max_steps = args.max_steps or args.num_train_epochs * self.steps_per_epoch
        # On the torch optimiser, which optimizer_update may step directly.
        self.scheduler = build_schedule(args, self.optimizer.optimizer, self.max_steps)
        # Saved and restored by .checkpoint_files as JSON (never registered with accelerate, which pickles it).
        self.trainables = Trainables(self.model, self.optimizer.optimizer, self.scheduler)
        self.eval_every = args.eval_steps or self.steps_per_epoch
        self.checkpoint_every = args.checkpointing_steps or self.steps_per_epoch

    @torch.no_grad()
    def _pixel_spectrum(self) -> SpectralBands | None:
        """PCA of the training images as the model sees them (after the image processor), once, for band errors."""
        if "band_errors" not in self.args.monitors:
            return None
        config = self.model.config
        dim = config.num_channels * config.image_size**2
        if dim > self.args.spectral_max_dim:
            logger.warning(f"band errors not measured: {dim} pixel values per image > spectral_max_dim")
            return None
        rows, pixels = len(self.probe_rows), lambda: map(self.pipeline.pixel_values, self.probe_loader)
        key = spectrum_key(getattr(self.train_set, "key", None), rows, config)
        with self.timer("spectrum"):
            bands, where = cached_pixel_spectrum(self.accelerator, key, pixels, self.args.band_edges)
        self.info(f"pixel spectrum of {rows} training images: {where}")
        return bands

    def _prepare_output_dir(self) -> None:
        """Main process: check output_dir, lock it, clean up after killed runs (docs/design.md, reliability)."""
        self.output = OutputDirectory(self.output_dir)
        self.output.prepare()
        if self.args.push_to_hub and os.environ.get("HF_HUB_OFFLINE") == "1":
            logger.warning("--push_to_hub with HF_HUB_OFFLINE=1: the push at the end will fail (run kept)")

    def _resume(self, resume_dir: Path | None) -> None:
        """Weights, optimiser, scheduler, RNG, position, history and loss sums from the checkpoint (no pickle)."""
        self.state, self.last_checkpoint = TrainerState(run_args=run_defining_args(self.all_args)), resume_dir
        if resume_dir is None:
            return
        self._check_position(resume_dir / TRAINER_STATE, self.resumed_state)
        load_checkpoint(self.accelerator, resume_dir, self.trainables, self.resumed_state)
        self.state = self.resumed_state
        self.state.run_args = run_defining_args(self.all_args)  # what was allowed to change is now the run's
        if not self.accelerator.is_main_process:  # the main process owns the summed losses
            self.state.clear_train_sums()
        self.info(f"resumed from {resume_dir} at step {self.state.step}")

    def _check_position(self, path: Path, state: TrainerState) -> None:
        """The checkpoint's position must lie inside this run's epochs: a batch past the end (a larger batch size,
        more processes, a damaged file) would leave every epoch empty. The position counts batches, so it has no
        meaning for another batch size unless it is an epoch boundary."""
        args, processes = self.args, self.accelerator.num_processes
        if state.batch_in_epoch >= self.batches_per_epoch:
            raise ValueError(
                f"resume_from_checkpoint: {path}: field 'batch_in_epoch' is {state.batch_in_epoch}, past the end of "
                f"this run's epochs of {self.batches_per_epoch} batches ({args.per_device_train_batch_size} images x "
                f"{processes} process(es)); resume with the checkpoint's batch size and number of processes"
            )
        saved = state.run_args.get("per_device_train_batch_size", args.per_device_train_batch_size)
        if state.batch_in_epoch and saved != args.per_device_train_batch_size:
            raise ValueError(
                f"resume_from_checkpoint: {path} stopped mid-epoch (batch {state.batch_in_epoch} of batches of "
                f"{saved} images): per_device_train_batch_size can change only at a checkpoint on an epoch "
                f"boundary (batch_in_epoch 0); resume with --per_device_train_batch_size {saved}"
            )

    def close(self) -> None:
        """Release output_dir's lock (also after an error); close the progress bar, so that an error's line is
        printed after it, not above it."""
        if getattr(self, "progress", None) is not None:
            self.progress.close()
        output = getattr(self, "output", None)
        if output is not None:
            output.release_lock()

    def report_stop(self) -> None:
        """After SIGTERM: say on stderr (main process) that the run stopped and how to continue it."""
        if getattr(self, "accelerator", None) is not None and not self.accelerator.is_main_process:
            return
        if getattr(self, "progress", None) is not None:
            self.progress.close()  # the message on a line of its own
        state, checkpoint = getattr(self, "state", None), find_checkpoint(self.output_dir)
        where = f" at step {state.step}" if state is not None else " during setup"
        if checkpoint is None:
            resume = "no checkpoint was written yet: run the same command again to start over"
        else:
            resume = (
                f"the latest checkpoint is {checkpoint}: run the same command with --resume_from_checkpoint "
                "latest to continue from it"
            )
        print(f"stopped: training stopped by SIGTERM{where}; {resume}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------------------ steps

    def epoch_batches(self):
        """The current epoch's batches from the current position (a resumed run skips what it consumed)."""
        state = self.state
        loader = self.train_loader
        if self.data_args.streaming:
            self.train_set.set_position(state.epoch, state.batch_in_epoch)
            return loader
        if state.batch_in_epoch:
            loader = self.accelerator.skip_first_batches(self.train_loader, state.batch_in_epoch)
        loader.set_epoch(state.epoch)
        self.sampler.set_epoch(state.epoch)
        return loader

    def optimiser_steps(self):
        """Train until ``max_steps``, yielding the step number after each optimiser step (and its log, evaluation
        and checkpoint): :func:`train` drains it, the benchmarks time it."""
        while self.state.step < self.max_steps:
            position = (self.state.epoch, self.state.batch_in_epoch)
            for batch in self.epoch_batches():
                if self.train_step(batch):
                    self.after_step()
                    yield self.state.step
                if self.state.step >= self.max_steps:
                    return
            if (self.state.epoch, self.state.batch_in_epoch) == position:  # never spin on an empty epoch
                raise RuntimeError(
                    f"epoch {position[0]} gave no training batch from batch {position[1]} on (an epoch has "
                    f"{self.batches_per_epoch}); stopped at step {self.state.step}"
                )

    def train_step(self, batch) -> bool:
        """One micro-batch forward/backward (and an optimiser step at the end of an accumulation); returns whether
        an optimiser step completed."""
        accelerator, state, model = self.accelerator, self.state, self.prepared_model
        # Every random draw of this micro-batch is a function of (seed, micro-batch, process): exact resumption.
        seed = step_seed(
            self.args.seed,
            state.epoch * self.batches_per_epoch + state.batch_in_epoch,
            accelerator.process_index,
        )
        seed_global_generators(seed, accelerator.device)  # dropout, if the configuration has any
        generator = torch.Generator(device=accelerator.device).manual_seed(seed)
        with accelerator.accumulate(model):
            pixel_values = self.pipeline.training(batch, generator)
            randomness = self.model.sample_forward_randomness(pixel_values, generator)
            outputs = model(pixel_values=pixel_values, labels=batch["labels"], **randomness)
            self.guard.observe(outputs.loss, self.describe_checkpoint)
            accelerator.backward(outputs.loss)
            if accelerator.sync_gradients:
                optimizer_update(accelerator, model, self.optimizer, self.scheduler, self.args.max_grad_norm)
        state.advance(self.batches_per_epoch)
        self.loss_sums.add(outputs)
        state.train_count += 1
        if accelerator.sync_gradients:
            state.step += 1
            self.progress.update(1)
        return accelerator.sync_gradients

    def describe_checkpoint(self) -> str:
        return str(self.last_checkpoint or "none (no checkpoint was written yet)")

    def after_step(self) -> None:
        """Log, evaluate and checkpoint at their cadences (and at the last step)."""
        step, args = self.state.step, self.args
        end_of_epoch, last = self.state.batch_in_epoch == 0, step == self.max_steps
        log = step % args.logging_steps == 0
        evaluate = step % self.eval_every == 0 or (args.eval_steps is None and end_of_epoch) or last
        checkpoint = (
            step % self.checkpoint_every == 0 or (args.checkpointing_steps is None and end_of_epoch) or last
        )
        if log or evaluate or checkpoint:  # nothing leaves the run touched by a non-finite step
            self.guard.check(self.describe_checkpoint)
        if log:
            self.log()
        if evaluate:
            self.evaluate()
        if checkpoint:
            self.checkpoint()

    def log(self) -> None:
        """Mean loss since the last log line and the learning rate, to the progress bar and the trackers."""
        logs = {
            "train/loss_step": self.loss_sums.pop_log_mean(),
            "train/learning_rate": self.scheduler.get_last_lr()[0],
        }
        self.progress.set_postfix(loss=f"{logs['train/loss_step']:.4g}")
        if self.log_with:
            self.accelerator.log(logs, step=self.state.step)

    # ----------------------------------------------------------------------------------------- evaluation

    def evaluate(self) -> dict:
        """Run every monitor over the probe's training rows and the validation split; append a history record."""
        with self.timer("evaluate"):
            return self._evaluate()

    def _evaluate(self) -> dict:
        model = self.accelerator.unwrap_model(self.prepared_model)
        # Fixed noise: every evaluation of a run sees the same corruption / masking, so its numbers compare.
        generator = torch.Generator(device=self.accelerator.device).manual_seed(
            derived_seed(self.args.seed, self.accelerator.process_index, 1)
        )
        evaluation = self.pipeline.evaluation
        splits = ((TRAIN, map(evaluation, self.probe_loader)), (EVAL, map(evaluation, self.eval_loader)))
        record = self._train_record()
        with full_parameters(self.accelerator, self.prepared_model):  # FSDP: gathered on every process
            record |= run_monitors(model, self.accelerator, self.monitors, splits, generator)
        self.state.history.append(record)
        self.state.clear_train_sums()
        if self.log_with:
            self.accelerator.log(
                {k: v for k, v in record.items() if k not in ("step", "epoch")}, step=record["step"]
            )
            if self._tracker_figures_due():
                log_figures(self.accelerator, self._monitor_figures(), record["step"])
        self.info(summary(record))
        return record

    def _tracker_figures_due(self) -> bool:
        """Whether this evaluation sends the monitors' figures to the trackers: every ``tracker_figures_every``-th
        evaluation, except the last one, whose figures :meth:`publish` sends (drawn once for the PNG files too).
        Drawing and encoding them costs more than a small run's evaluation itself."""
        every = self.args.tracker_figures_every
        return bool(every) and len(self.state.history) % every == 0 and self.state.step < self.max_steps

    def _train_record(self) -> dict:
        """The training half of a history record: mean losses since the last evaluation, over all processes."""
        totals, count = self._reduced_sums()
        record = {"step": int(self.state.step), "epoch": round(self.state.step / self.steps_per_epoch, 4)}
        for name in TRAIN_LOSSES:
            record[train_key(name)] = totals[name] / count if count else float("nan")
        record["train/learning_rate"] = float(self.scheduler.get_last_lr()[0])
        return record

    def _reduced_sums(self) -> tuple[dict[str, float], int]:
        """Loss sums and micro-batch count summed over processes (float64, so the means are exact to print)."""
        self.loss_sums.fold_into(self.state.train_sums)
        state = self.state
        values = torch.tensor(
            [state.train_sums[name] for name in TRAIN_LOSSES] + [state.train_count],
            dtype=torch.float64, device=self.accelerator.device,
        )  # fmt: skip
        values = self.accelerator.reduce(values, "sum").cpu().tolist()
        return dict(zip(TRAIN_LOSSES, values[:-1])), int(values[-1])

    def _monitor_figures(self) -> dict:
        figures = {}
        for monitor in self.monitors:
            figures.update(monitor.figures())
        return figures

    # ------------------------------------------------------------------------------------ checkpoint, publish

    def checkpoint(self) -> None:
        """Save a checkpoint (atomically) with everything needed to continue exactly from here."""
        with self.timer("checkpoint"):
            self._checkpoint()

    def _checkpoint(self) -> None:
        sums, count = self._reduced_sums()
        state = TrainerState(**{**self.state.to_dict(), "train_sums": sums, "train_count": count})
        self.last_checkpoint = save_checkpoint(
            self.accelerator, self.output_dir, state, self.args.checkpoints_total_limit, self.trainables
        )
        # The main process now owns the summed losses (as a resumed run would), the others start at 0.
        if self.accelerator.is_main_process:
            self.state.train_sums, self.state.train_count = sums, count
        else:
            self.state.clear_train_sums()

    def results(self) -> RunResults:
        """``results.json``: the last evaluation, every argument, what the run was, library versions."""
        return run_results(self)

    def publish(self) -> dict:
        """Model, processor, card, results, history and figures in a staging directory renamed at the end."""
        self.guard.check(self.describe_checkpoint)  # the steps since the last log line
        with self.timer("publish"):
            results = self._publish()
        # One duration: the card's "training time" is results.json's runtime_seconds (taken as publishing starts);
        # this line says so beside the total, which adds the publishing itself.
        self.info(
            f"{self.timer.finish(time.time() - self.start_time)}; the model card's training time, "
            f"{results['run']['runtime_seconds']:.1f} s, is the total before publishing"
        )
        return results

    def _publish(self) -> dict:
        from .. import cards  # noqa: PLC0415  (card machinery: jinja2, huggingface_hub)

        self.progress.close()
        results = self.results().to_dict()
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        state_dict = accelerator.get_state_dict(self.prepared_model)  # a collective: every process
        model = accelerator.unwrap_model(self.prepared_model)
        # Every process: under FSDP the reconstructions' forward gathers the parameters (a collective).
        with full_parameters(accelerator, self.prepared_model):
            figures = self._final_figures(model)
        if accelerator.is_main_process:
            staging = self.output.staging()
            # config.json, model.safetensors, preprocessor_config.json, code; the whole weights (get_state_dict
            # gathers shards of FSDP / ZeRO-3 on every process's call, above).
            model.save_pretrained(staging, state_dict=state_dict)
            write_json_atomic(staging / "results.json", results)
            write_json_atomic(staging / "history.json", self.state.history)
            captions = write_figures(staging, figures)
            if self.log_with:
                log_figures(accelerator, figures, self.state.step)
            card = cards.render_model_card(results, hub_model_id=self.args.hub_model_id, figures=captions)
            card.save(staging / "README.md")
            self.output.publish(staging)
            self.info(f"wrote {self.output_dir}")
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return results

    def _final_figures(self, model) -> dict:
        generator = torch.Generator(device=self.accelerator.device).manual_seed(
            derived_seed(self.args.seed, 0, 1)
        )
        figures = final_figures(model, self.eval_set, self.pipeline, self.image_processor, generator)
        figures |= history_figures(self.state.history, self.args.probe_subspaces)
        return figures | self._monitor_figures()

    def push(self) -> None:
        """Upload the whole output directory with our card (never transformers' template)."""
        if self.args.push_to_hub and self.accelerator.is_main_process:
            from .. import cards  # noqa: PLC0415

            url = cards.push_to_hub(self.output_dir, self.args.hub_model_id, private=self.args.hub_private)
            self.info(f"pushed to {url}")

    def info(self, message: str) -> None:
        """Log on the main process only, through tqdm's writer so the progress bar stays whole."""
        if getattr(self, "accelerator", None) is None or self.accelerator.is_main_process:
            logger.info(message)
