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
