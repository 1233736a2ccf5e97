"""The fast paths of the training loop: no host read per step, the on-device non-finite guard, loss sums."""

import copy
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from hf_recperc.training.guard import NonFiniteGuard, NonFiniteLossError, fused_available
from hf_recperc.training.state import DeviceLossSums, TrainerState


def adamw_and_guard(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5, fused=True)
    guard = NonFiniteGuard(Accelerator(cpu=True), optimizer, deferred=True, first_step=3)
    return optimizer, guard


def step(model, optimizer, guard, poison=False):
    loss = model(torch.ones(4, 3)).pow(2).mean() * (float("nan") if poison else 1.0)
    guard.observe(loss, lambda: "checkpoint-2")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_a_non_finite_step_and_every_later_one_leave_weights_and_adamw_state_untouched():
    assert fused_available(torch.device("cpu"))
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer, guard = adamw_and_guard(model)
    step(model, optimizer, guard)
    step(model, optimizer, guard)
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    step(model, optimizer, guard, poison=True)  # NaN gradients: AdamW would write NaN everywhere
    step(model, optimizer, guard)  # a good step after a bad one is skipped too (weight decay would move it)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), name
    for index, moments in optimizer.state_dict()["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, state["state"][index][key]), (index, key)
    with pytest.raises(NonFiniteLossError, match=r"step 6: the training loss is nan .*checkpoint-2"):
        guard.check(lambda: "checkpoint-2")  # 3 steps before this run, 2 good ones, the 3rd was bad


def test_the_guard_moves_weights_like_plain_adamw_while_losses_are_finite():
    torch.manual_seed(0)
    guarded, plain = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    plain.load_state_dict(guarded.state_dict())
    optimizer, guard = adamw_and_guard(guarded)
    reference = torch.optim.AdamW(plain.parameters(), lr=0.1, weight_decay=0.5, fused=True)
    for _ in range(3):
        step(guarded, optimizer, guard)
        reference.zero_grad()
        plain(torch.ones(4, 3)).pow(2).mean().backward()
        reference.step()
    guard.check(lambda: "none")
    for a, b in zip(guarded.parameters(), plain.parameters()):
        assert torch.equal(a, b)


def test_an_immediate_guard_raises_at_the_bad_micro_batch():
    guard = NonFiniteGuard(Accelerator(cpu=True), torch.optim.SGD([torch.zeros(1)], lr=1), deferred=False)
    guard.observe(torch.tensor(1.0), lambda: "none")
    with pytest.raises(NonFiniteLossError, match=r"step 2: the training loss is inf"):
        guard.observe(torch.tensor(float("inf")), lambda: "none")


def test_device_loss_sums_fold_and_log_like_host_sums():
    sums, state = DeviceLossSums("cpu"), TrainerState()
    values = [(1.5, 1.0, 0.5), (2.5, 2.0, None)]
    for loss, rec, sup in values:
        outputs = SimpleNamespace(
            loss=torch.tensor(loss),
            reconstruction_loss=torch.tensor(rec),
            supervised_loss=None if sup is None else torch.tensor(sup),
        )
        sums.add(outputs)
    assert sums.pop_log_mean() == 2.0 and sums.pop_log_mean() == 0.0
    sums.fold_into(state.train_sums)
    assert state.train_sums == {"loss": 4.0, "reconstruction_loss": 3.0, "supervised_loss": 0.5}
    sums.fold_into(state.train_sums)  # folded sums restart from zero
    assert state.train_sums["loss"] == 4.0


@pytest.mark.parametrize(
    "family, preset, overrides",
    [
        ("ae", "cifar-conv-small", {}),
        ("ae", "cifar-conv-small", {"corruption": "gaussian:0.3"}),
        ("ae", "digits-mlp", {}),
        ("ae", "cifar-resnet18", {}),
        ("mae", "cifar-vit-tiny", {}),
    ],
)
def test_evaluation_reuses_the_clean_embeddings_with_the_same_numbers(family, preset, overrides, one_thread):
    from hf_recperc import (
        RecPercAEConfig,
        RecPercAEForPreTraining,
        RecPercMAEConfig,
        RecPercMAEForPreTraining,
    )
    from hf_recperc.training.evaluation import scored_outputs

    config_class, model_class = {
        "ae": (RecPercAEConfig, RecPercAEForPreTraining),
        "mae": (RecPercMAEConfig, RecPercMAEForPreTraining),
    }[family]
    torch.manual_seed(0)
    model = model_class(config_class.preset(preset, **overrides)).eval()
    config = model.config
    pixel_values = torch.randn(4, config.num_channels, config.image_size, config.image_size)
    labels = torch.arange(4) % config.num_labels
    with torch.no_grad():
        encoded = model.base_model(pixel_values=pixel_values, output_hidden_states=True)
        # One pass gives the same embeddings and hidden states as two.
        torch.testing.assert_close(encoded.embeddings, model.get_embeddings(pixel_values), rtol=0, atol=1e-6)
        for got, expected in zip(encoded.hidden_states, model.hidden_states(pixel_values)):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        reconstruction, weight, logits = scored_outputs(
            model, pixel_values, labels, encoded.embeddings, torch.Generator().manual_seed(1)
        )
        generator = torch.Generator().manual_seed(1)
        outputs = model(
            pixel_values=pixel_values,
            labels=labels,
            **model.sample_forward_randomness(pixel_values, generator),
        )
        expected, expected_weight = model.reconstruction_for_metrics(pixel_values, outputs)
    torch.testing.assert_close(reconstruction, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, outputs.logits, rtol=0, atol=1e-5)
    assert (weight is None) == (expected_weight is None)


TINY_RUN = [
    "--max_train_samples", "128", "--max_eval_samples", "64", "--per_device_train_batch_size", "32",
    "--max_steps", "4", "--eval_steps", "4", "--report_to", "none", "--monitors", "reconstruction", "online_probe",
]  # fmt: skip


def tiny_train(output_dir, *extra):
    from hf_recperc.training import parse_args, train

    return train(*parse_args(["--output_dir", str(output_dir), *TINY_RUN, *extra]))


def test_channels_last_and_bf16_train_to_finite_numbers(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    # A fresh process: accelerate fixes the mixed precision of a process at its first Accelerator.
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "scripts/pretrain.py", "--output_dir", str(tmp_path / "run"), *TINY_RUN]
    command += ["--preset", "cifar-conv-small", "--config_overrides", "num_channels=1,image_size=8,depth=2"]
    command += ["--channels_last", "--mixed_precision", "bf16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["args"]["channels_last"] and results["run"]["mixed_precision"] == "bf16"
    assert all(v == v for k, v in results.items() if k.startswith(("train/", "eval/")))  # no NaN


def test_the_pixel_store_and_the_processor_path_train_the_same_weights(tmp_path, one_thread):
    from safetensors.torch import load_file

    tiny_train(tmp_path / "store")
    tiny_train(tmp_path / "processor", "--pixel_store", "false")
    store, processor = (
        load_file(tmp_path / "store" / "model.safetensors"),
        load_file(tmp_path / "processor" / "model.safetensors"),
    )
    for name in store:
        torch.testing.assert_close(store[name], processor[name], rtol=0, atol=1e-5)


@pytest.mark.slow  # the inductor compile takes about a minute on one CPU core
def test_torch_compile_trains_on_cpu_with_inductor(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo, env = (
        Path(__file__).resolve().parents[1],
        {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    results = {}
    for name, extra in (("eager", []), ("compiled", ["--torch_compile"])):
        # Fresh processes: accelerate keeps the dynamo backend of a process's first Accelerator.
        command = [sys.executable, "scripts/pretrain.py", "--output_dir", str(tmp_path / name), *TINY_RUN]
        command += ["--model_family", "mae", *extra]
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert "training model is a OptimizedModule" in done.stderr
    assert results["compiled"]["train/loss"] == pytest.approx(results["eager"]["train/loss"], rel=1e-3)


def test_dual_pca_gives_the_band_errors_of_the_full_pca():
    from hf_recperc.monitors import SpectralBands
    from hf_recperc.spectral import PCA
    from hf_recperc.training.spectrum_cache import dual_pca

    torch.manual_seed(0)
    scales = torch.logspace(0, -3, 96)  # a decaying spectrum, like pixels'
    rows = torch.randn(60, 96) * scales + 0.3  # N < D
    edges = [0.0, 0.5, 0.8, 0.9, 0.97, 1.0]
    full, dual = SpectralBands(PCA().fit(rows.double()), edges), SpectralBands(dual_pca(rows.double()), edges)
    assert full.dims == dual.dims
    images, reconstructions = torch.randn(5, 96) * scales, torch.randn(5, 96) * scales
    for a, b in zip(full.energies(images, reconstructions), dual.energies(images, reconstructions)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "argv, argument",
    [
        (["--monitor_max_eval_samples", "-1"], "monitor_max_eval_samples"),
        (["--random_resized_crop", "1.5"], "random_resized_crop"),
        (["--shuffle_buffer_size", "0"], "shuffle_buffer_size"),
    ],
)
def test_bad_throughput_flags_name_the_argument(argv, argument):
    from hf_recperc.training import parse_args

    with pytest.raises(ValueError, match=argument):
        parse_args(argv)


def test_streaming_needs_files_or_a_hub_id(tmp_path):
    from hf_recperc.training import parse_args, train

    with pytest.raises(ValueError, match="streaming"):
        train(*parse_args(["--streaming", "--output_dir", str(tmp_path / "run"), "--report_to", "none"]))
