"""Issue 13: the torchmetrics twin gives the evaluate module's numbers, in one process, two, and in Lightning."""

import doctest

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")

from conftest import assert_same_metric_results  # noqa: E402
from test_metric_streaming import (  # noqa: E402
    SUBSPACES,
    make_problem,
    one_process_answers,
    two_process_results,
)

import hf_recperc.torchmetrics  # noqa: E402
from hf_recperc.torchmetrics import SubspaceProbeAccuracy  # noqa: E402


def stream(metric, X, y, split="test", parts=5):
    for rows in np.array_split(np.arange(len(X)), parts):
        metric.update(torch.from_numpy(X[rows]), torch.from_numpy(y[rows]), split=split)
    return metric


def test_same_numbers_as_the_evaluate_module():
    expected = one_process_answers()
    X, y = make_problem()
    X_train, y_train = make_problem(num_rows=900, seed=1)
    metric = stream(SubspaceProbeAccuracy(X.shape[1], 3, subspaces=SUBSPACES), X, y)
    assert metric.compute() == expected["split"]  # same rows, same code: bit for bit
    metric.reset()
    stream(metric, X_train, y_train, split="train", parts=7)
    stream(metric, X, y)
    assert_same_metric_results(metric.compute(), expected["streamed_train"], 1e-9)
    metric.reset()
    assert not metric.features and float(metric.train_count) == 0.0


def test_float32_and_half_batches_match_the_module_to_float32_accuracy():
    import evaluate

    import hf_recperc

    X, y = make_problem(num_rows=2000, dim=16)
    X = X.astype(np.float32)
    expected = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY).compute(
        predictions=X[1000:], references=y[1000:], train_predictions=X[:1000], train_references=y[:1000]
    )
    metric = SubspaceProbeAccuracy(16, 3)
    stream(metric, X[:1000], y[:1000], split="train")
    stream(metric, X[1000:], y[1000:])
    assert_same_metric_results(metric.compute(), expected, 1e-5)
    half = SubspaceProbeAccuracy(16, 3)
    stream(half, X[:1000].astype(np.float16), y[:1000], split="train")
    stream(half, X[1000:].astype(np.float16), y[1000:])
    assert_same_metric_results(half.compute(), expected, 2e-2)  # features rounded to half: ~1e-3 relative


def test_states_are_moments_not_features():
    X, y = make_problem(num_rows=900, seed=1)
    metric = stream(SubspaceProbeAccuracy(X.shape[1], 3), X, y, split="train")
    assert metric._reductions.keys() >= {"train_outer", "train_cross", "features"}
    assert metric.train_outer.shape == (12, 12) and metric.train_count.item() == 900
    assert metric.features == []  # training rows were folded into the sums, not stored
    centred = X - X.mean(0)
    torch.testing.assert_close(
        metric.train_outer / 900 - torch.outer(metric.train_sum, metric.train_sum) / 900**2,
        torch.from_numpy(centred.T @ centred / 900),
        rtol=1e-10,
        atol=1e-12,
    )


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="num_features: expected an integer >= 1"):
        SubspaceProbeAccuracy(0, 3)
    with pytest.raises(ValueError, match="subspace 'top:2': fraction must be in"):
        SubspaceProbeAccuracy(4, 3, subspaces=["top:2"])
    metric = SubspaceProbeAccuracy(4, 3)
    with pytest.raises(ValueError, match=r"labels: values must lie in \[0, 3\)"):
        metric.update(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="features: expected 4 per row"):
        metric.update(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="split: expected one of"):
        metric.update(torch.randn(2, 4), torch.tensor([0, 1]), split="val")
    with pytest.raises(ValueError, match="features: no evaluated rows"):
        metric.compute()


def test_docstring_example_runs():
    failures, tried = doctest.testmod(hf_recperc.torchmetrics)
    assert tried > 0 and failures == 0


def test_two_gloo_processes_give_the_one_process_answer():
    expected = one_process_answers()
    for got in two_process_results()[0]["torchmetrics"]:
        assert got["split"] == expected["split"]
        assert_same_metric_results(got["streamed_train"], expected["streamed_train"], 1e-9)


def test_inside_a_lightning_trainer_as_a_callback_metric(tmp_path):
    lightning = pytest.importorskip("lightning")
    import evaluate

    import hf_recperc

    torch.manual_seed(0)
    X, y = make_problem(num_rows=768, dim=12)
    X = torch.from_numpy(X).float()
    y = torch.from_numpy(y)

    class Encoder(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(12, 6)
            self.decoder = torch.nn.Linear(6, 12)

        def training_step(self, batch, _):
            pixels, labels = batch
            latent = self.encoder(pixels)
            return {"loss": torch.nn.functional.mse_loss(self.decoder(latent), pixels), "latent": latent}

        def validation_step(self, batch, _):
            return {"latent": self.encoder(batch[0])}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    class ProbeCallback(lightning.Callback):
        """Training latents feed the probe's statistics, validation latents are scored."""

        def __init__(self):
            self.metric = SubspaceProbeAccuracy(num_features=6, num_classes=3, subspaces=["first:2", "all"])
            self.results = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.metric.update(outputs["latent"], batch[1], split="train")

        def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            self.metric.update(outputs["latent"], batch[1])

        def on_validation_epoch_end(self, trainer, module):
            if trainer.sanity_checking:
                self.metric.reset()
                return
            result = self.metric.compute()
            self.results.append(result)
            module.log_dict({f"probe/{k}": float(v) for k, v in result.items() if k != "probe"})
            self.metric.reset()

    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:512], y[:512]), batch_size=64)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[512:], y[512:]), batch_size=64)
    callback = ProbeCallback()
    model = Encoder()
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, train, val)
    assert len(callback.results) == 1 and callback.results[0]["num_train"] == 512
    assert trainer.callback_metrics["probe/accuracy/all"] == pytest.approx(
        callback.results[0]["accuracy/all"]
    )

    # After fit, the same numbers as the evaluate module on the final model's validation latents (the
    # training latents came from an encoder that changed during the epoch, so validate with fresh ones).
    callback.metric.reset()
    with torch.no_grad():
        callback.metric.update(model.encoder(X[:512]), y[:512], split="train")
    trainer.validate(model, val, verbose=False)
    with torch.no_grad():
        latents = model.encoder(X).numpy()
    expected = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY).compute(
        predictions=latents[512:],
        references=y[512:].numpy(),
        train_predictions=latents[:512],
        train_references=y[:512].numpy(),
        subspaces=["first:2", "all"],
    )
    assert_same_metric_results(callback.results[-1], expected, 1e-5)
