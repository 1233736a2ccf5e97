"""Issue 13: the torchmetrics twin gives the evaluate module's numbers, in one process, two, and in Lightning.

Citizen 9: it behaves like torchmetrics' own metrics (tensors out, forward, DDP, half precision, ``to(dtype)``),
checked with the contracts of torchmetrics' ``MetricTester`` (tests/metric_tester.py).
"""

import doctest

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")

import metric_tester  # noqa: E402
from conftest import assert_same_metric_results  # noqa: E402
from test_metric_streaming import (  # noqa: E402
    SUBSPACES,
    make_problem,
    one_process_answers,
    two_process_results,
)

import hf_recperc.torchmetrics  # noqa: E402
from hf_recperc.probing import SubspaceProbe  # noqa: E402
from hf_recperc.streaming import stratified_split  # noqa: E402
from hf_recperc.torchmetrics import SubspaceProbeAccuracy, subspace_probe_accuracy  # noqa: E402


def numbers(result: dict) -> dict:
    """0-d tensors -> Python numbers, to compare with the evaluate module's dict."""
    return {key: value.item() for key, value in result.items()}


def module_numbers(result: dict) -> dict:
    """The evaluate module's dict without the ``probe`` setting (the twin returns numbers only)."""
    return {key: value for key, value in result.items() if key != "probe"}


def stream(metric, X, y, split="test", parts=5):
    for rows in np.array_split(np.arange(len(X)), parts):
        metric.update(torch.from_numpy(X[rows]), torch.from_numpy(y[rows]), split=split)
    return metric


def test_same_numbers_as_the_evaluate_module():
    expected = one_process_answers()
    X, y = make_problem()
    X_train, y_train = make_problem(num_rows=900, seed=1)
    metric = stream(SubspaceProbeAccuracy(X.shape[1], 3, subspaces=SUBSPACES), X, y)
    assert numbers(metric.compute()) == module_numbers(expected["split"])  # same rows, same code: bit for bit
    metric.reset()
    stream(metric, X_train, y_train, split="train", parts=7)
    stream(metric, X, y)
    assert_same_metric_results(numbers(metric.compute()), module_numbers(expected["streamed_train"]), 1e-9)
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
    assert_same_metric_results(numbers(metric.compute()), module_numbers(expected), 1e-5)
    half = SubspaceProbeAccuracy(16, 3)
    stream(half, X[:1000].astype(np.float16), y[:1000], split="train")
    stream(half, X[1000:].astype(np.float16), y[1000:])
    assert_same_metric_results(
        numbers(half.compute()), module_numbers(expected), 2e-2
    )  # features rounded to half: ~1e-3 relative


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
        assert got["split"] == module_numbers(expected["split"])
        assert_same_metric_results(got["streamed_train"], module_numbers(expected["streamed_train"]), 1e-9)


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
            self.results.append(numbers(result))
            module.log_dict({f"probe/{k}": v for k, v in result.items()})
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
    assert_same_metric_results(callback.results[-1], module_numbers(expected), 1e-5)


# ---- Citizen 9: torchmetrics' MetricTester contracts (tests/metric_tester.py) ----

TESTER_SUBSPACES = ["top:0.9", "bottom:0.2", "first:3", "all"]
TESTER_ARGS = {"num_features": 12, "num_classes": 3, "subspaces": TESTER_SUBSPACES}


def tester_batches(splits=("train", "train", "test", "test") * 2, rows=96, seed=0):
    """float64 batches (float64 eigensolver on both sides: the reference is exact to 1e-8), 3 classes each."""
    batches = []
    for index, split in enumerate(splits):
        X, y = make_problem(num_rows=rows, dim=12, seed=seed + index)
        batches.append((torch.from_numpy(X), torch.from_numpy(y), split))
    return batches


def reference(batches):
    """scikit-learn-style reference: ``SubspaceProbe.fit`` on the training rows (or the stratified 80% of the
    evaluated rows when there are none), ``score`` on the evaluated rows."""
    X = torch.cat([f for f, _, s in batches if s == "test"])
    y = torch.cat([labels for _, labels, s in batches if s == "test"])
    train = [(f, labels) for f, labels, s in batches if s == "train"]
    if train:
        X_train, y_train = torch.cat([f for f, _ in train]), torch.cat([labels for _, labels in train])
    else:
        fit, score = (torch.from_numpy(i) for i in stratified_split(y.numpy(), 0.2, 0))
        X_train, y_train, X, y = X[fit], y[fit], X[score], y[score]
    scores = SubspaceProbe(subspaces=tuple(TESTER_SUBSPACES)).fit(X_train, y_train).score(X, y)
    return module_numbers(scores)


def test_class_contracts_of_metric_tester_in_one_process():
    """Citizen 9: tensors out; forward gives the batch's own value (a training batch: {}), pickles, clones."""
    for batches in (tester_batches(), tester_batches(("test",) * 4)):
        metric_tester.class_test(0, 1, batches, SubspaceProbeAccuracy, reference, TESTER_ARGS)


def test_forward_on_a_training_batch_accumulates_and_returns_an_empty_dict():
    """Citizen 9: ``metric(x, y, split="train")`` used to raise "no evaluated rows"."""
    (X_train, y_train, _), (X, y, _) = tester_batches(("train", "test"))
    metric = SubspaceProbeAccuracy(**TESTER_ARGS)
    assert metric(X_train, y_train, split="train") == {}
    assert float(metric.train_count) == len(X_train)
    batch_value = metric(X, y)
    assert numbers(batch_value) == reference([(X, y, "test")])  # the batch alone: its own 80/20 split
    assert numbers(metric.compute()) == pytest.approx(
        reference([(X_train, y_train, "train"), (X, y, "test")])
    )


def test_class_contracts_of_metric_tester_in_two_gloo_processes():
    """Citizen 9: DDP (2 gloo processes, batches rank::2), also with dist_sync_on_step (each forward synced)."""
    mixed = tester_batches()
    common = {"metric_class": SubspaceProbeAccuracy, "reference": reference, "metric_args": TESTER_ARGS}
    metric_tester.run_ddp(
        [
            {"batches": mixed, **common},
            {"batches": mixed, "dist_sync_on_step": True, **common},
            {"batches": tester_batches(("test",) * 4), **common},
        ]
    )


def test_functional_form_equals_the_reference_and_the_class():
    """Citizen 9: ``subspace_probe_accuracy(features, labels)`` is the functional twin of the class."""
    batches = tester_batches(("test",) * 3)
    metric_tester.functional_test(batches, subspace_probe_accuracy, reference, subspaces=TESTER_SUBSPACES)
    (X_train, y_train, _), (X, y, _) = tester_batches(("train", "test"))
    function = subspace_probe_accuracy(X, y, X_train, y_train, subspaces=TESTER_SUBSPACES)
    metric = SubspaceProbeAccuracy(**TESTER_ARGS)
    metric.update(X_train, y_train, split="train")
    metric.update(X, y)
    assert_same_metric_results(numbers(metric.compute()), numbers(function), 1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rows_give_tensors_close_to_float32(dtype):
    """Citizen 9: torchmetrics' dtype-support check, plus the numbers of float32 rows to half's rounding."""
    batch = tester_batches(("test",), rows=600)[0]
    metric_tester.dtype_test(
        SubspaceProbeAccuracy(**TESTER_ARGS),
        subspace_probe_accuracy,
        batch,
        dtype,
        subspaces=TESTER_SUBSPACES,
    )
    X, y, _ = batch
    half = numbers(subspace_probe_accuracy(X.to(dtype), y, subspaces=TESTER_SUBSPACES))
    single = numbers(subspace_probe_accuracy(X.float(), y, subspaces=TESTER_SUBSPACES))
    assert_same_metric_results(half, single, 2e-2)


@pytest.mark.parametrize(
    "cast",
    [
        lambda m: m.to(torch.bfloat16),
        lambda m: m.to("cpu", torch.float16),
        lambda m: m.half(),
        lambda m: m.set_dtype(torch.bfloat16),
        lambda m: m.double(),
    ],
    ids=["to_bf16", "to_cpu_fp16", "half", "set_dtype_bf16", "double"],
)
def test_module_casts_keep_the_statistics_and_rows_in_their_dtype(cast):
    """Citizen 9: ``Module.to(dtype)`` / ``set_dtype`` used to cast the float64 statistics (bf16-true Lightning
    then failed in compute: "expected m1 and m2 to have the same dtype")."""
    batches = tester_batches(("train", "test"))
    metric = SubspaceProbeAccuracy(**TESTER_ARGS)
    for features, labels, split in batches:
        metric.update(features.float(), labels, split=split)
    expected = numbers(metric.compute())
    cast(metric)
    assert metric.train_outer.dtype == torch.float64 and metric.features[0].dtype == torch.float32
    assert metric._defaults["train_outer"].dtype == torch.float64
    assert numbers(metric.compute()) == expected
    metric.update(batches[1][0].to(torch.bfloat16), batches[1][1])  # bf16 rows, as a bf16-true model gives
    assert numbers(metric.compute())["num_train"] == expected["num_train"]


def test_bf16_true_lightning_module_holding_the_metric_matches_float32(tmp_path):
    """Citizen 9: ``lightning.Trainer(precision="bf16-true")`` casts the module (and the metric on it) to
    bfloat16; the metric still computes (it used to fail: "expected m1 and m2 to have the same dtype") and gives
    the numbers of a float32 run to 1e-3.

    The encoder sums pairs of integer inputs, so its bf16 latents are exact (asserted): a difference could only
    come from the metric. (A random bf16 encoder rounds its latents, which moves rows near a probe's decision
    boundary by itself.)"""
    lightning = pytest.importorskip("lightning")

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(12, 6, bias=False)
            with torch.no_grad():  # latent j = x_2j - x_2j+1: integers below 256, exact in bfloat16
                self.encoder.weight.copy_(torch.kron(torch.eye(6), torch.tensor([[1.0, -1.0]])))
            self.probe = SubspaceProbeAccuracy(6, 3, subspaces=["top:0.9", "bottom:0.2", "all"])
            self.results, self.latents = [], []

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            # dataloader 0: rows the probe fits on; dataloader 1: rows it scores
            latent = self.encoder(batch[0])
            self.latents.append(latent.float())
            self.probe.update(latent, batch[1], split=("train", "test")[dataloader_idx])

        def on_validation_epoch_end(self):
            result = self.probe.compute()
            self.results.append(numbers(result))
            self.log_dict({f"probe/{key}": value.float() for key, value in result.items()})
            self.probe.reset()

    X, y = make_problem(num_rows=1536, dim=12, seed=5)
    X, y = torch.from_numpy(X * 4).round().float(), torch.from_numpy(y)
    loaders = [
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[rows], y[rows]), batch_size=128)
        for rows in (slice(0, 1024), slice(1024, None))
    ]
    runs = {}
    for precision in ("32-true", "bf16-true"):
        module = Module()
        trainer = lightning.Trainer(
            accelerator="cpu",
            devices=1,
            precision=precision,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.validate(module, loaders, verbose=False)
        assert module.probe.train_outer.dtype == torch.float64
        assert trainer.callback_metrics["probe/accuracy/all"].item() == pytest.approx(
            module.results[-1]["accuracy/all"], abs=1e-6
        )
        runs[precision] = module
    assert next(runs["bf16-true"].encoder.parameters()).dtype == torch.bfloat16  # it really ran in bf16
    assert torch.equal(torch.cat(runs["bf16-true"].latents), torch.cat(runs["32-true"].latents))
    assert_same_metric_results(runs["bf16-true"].results[-1], runs["32-true"].results[-1], 1e-3)
