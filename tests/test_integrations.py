"""Citizen 12: our monitors inside transformers.Trainer and lightning.Trainer (hf_recperc.integrations).

A tiny ViTMAEForPreTraining (random init) trains a few steps on digits, run_mae.py-style; the callback's numbers
at the last evaluation equal the perception report's on the saved checkpoint and the same rows.
"""

import pytest
import torch

from hf_recperc.images import load_image_dataset
from hf_recperc.integrations import PerceptionCallback, PerceptionMeasurement
from hf_recperc.monitors import KNNMonitor, SubspaceProbeMonitor
from hf_recperc.report import perception_report

pytestmark = pytest.mark.usefixtures("one_thread")

SUBSPACES = ["top:0.9", "bottom:0.2", "all"]


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset("digits", max_train_samples=160, max_eval_samples=80)


def tiny_mae():
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=64, mask_ratio=0.75,
    )  # fmt: skip
    torch.manual_seed(0)
    return ViTMAEForPreTraining(config), ViTImageProcessor(size={"height": 16, "width": 16})


def pixel_rows(processor, split, image_column):
    """run_mae.py's training rows: ``{"pixel_values": (3, 16, 16)}``, no labels."""
    images = [image.convert("RGB") for image in split[image_column]]
    return [{"pixel_values": row} for row in processor(images, return_tensors="pt")["pixel_values"]]


def collate(rows):
    return {"pixel_values": torch.stack([row["pixel_values"] for row in rows])}


def report_metrics(path, data):
    report = perception_report(str(path), data, subspaces=SUBSPACES, curves=False, figures=False)
    return report["metrics"]


def test_trainer_callback_logs_the_report_numbers_at_each_evaluation(digits, tmp_path):
    """Citizen 12: transformers.Trainer + PerceptionCallback: subspace probes, kNN and effective rank at each
    evaluation, in the metrics, the log history, the trackers and the card; equal to the report's numbers."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Tracker(TrainerCallback):  # stands in for report_to's trackers: they read on_log
        logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    model, processor = tiny_mae()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=16,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        learning_rate=1e-3,
        disable_tqdm=True,
        label_names=["pixel_values"],
    )  # fmt: skip  (label_names: the evaluation reports eval_loss, as run_mae.py's does)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=pixel_rows(processor, digits.train, digits.image_column),
        eval_dataset=pixel_rows(processor, digits.validation, digits.image_column),
        data_collator=collate,
        processing_class=processor,
        callbacks=[Tracker()],
    )
    callback = PerceptionCallback(digits, subspaces=SUBSPACES).attach(trainer)
    trainer.train()

    assert [record["step"] for record in callback.history] == [2, 4]
    last = {key: value for key, value in callback.history[-1].items() if key != "step"}
    feature = "layers/layer_2/cls"
    for key in (
        f"{feature}/accuracy/bottom:0.2",
        f"{feature}/knn/accuracy",
        f"{feature}/spectrum/effective_rank",
    ):
        assert key in last
    assert model.config.mask_ratio == 0.75  # set to 0 to see every patch while measuring, then restored

    evaluations = [r for r in trainer.state.log_history if "eval_runtime" in r]
    assert all("eval_loss" in r for r in evaluations)
    assert [r[f"eval_{feature}/knn/accuracy"] for r in evaluations] == [
        h[f"{feature}/knn/accuracy"] for h in callback.history
    ]
    tracked = [log for log in Tracker.logs if f"eval_{feature}/spectrum/effective_rank" in log]
    assert len(tracked) == 2
    trainer.create_model_card()
    assert "Layers/layer 2/cls/knn/accuracy" in (tmp_path / "run" / "README.md").read_text()

    trainer.save_model(str(tmp_path / "checkpoint"))  # weights + image processor, as run_mae.py saves them
    assert report_metrics(tmp_path / "checkpoint", digits) == pytest.approx(last, abs=1e-6, nan_ok=True)


def test_measurement_with_monitor_objects_reads_the_embedding_alias(digits):
    """Citizen 12: any list of our Monitor objects; "embedding" is the last layer under the model's pooling."""
    model, processor = tiny_mae()
    model.train()
    measure = PerceptionMeasurement(
        digits, monitors=[SubspaceProbeMonitor(subspaces=SUBSPACES), KNNMonitor("layer_1/mean")]
    )
    got = measure(model, image_processor=processor)
    by_name = PerceptionMeasurement(
        digits, monitors=["subspace", "knn"], layers=[1, 2], poolings=["cls", "mean"]
    )
    expected = by_name(model, image_processor=processor)
    for spec in SUBSPACES:
        assert got[f"subspace_probe/accuracy/{spec}"] == expected[f"layers/layer_2/cls/accuracy/{spec}"]
    assert got["knn/accuracy"] == expected["layers/layer_1/mean/knn/accuracy"]
    assert model.config.mask_ratio == 0.75 and model.training and model.vit.training  # restored


def test_lightning_callback_logs_the_report_numbers_at_each_validation(digits, tmp_path):
    """Citizen 12: lightning.Trainer + LightningPerceptionCallback on a LightningModule holding the MAE."""
    lightning = pytest.importorskip("lightning")
    from hf_recperc.integrations import LightningPerceptionCallback

    model, processor = tiny_mae()

    class MAE(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, batch_idx):
            return self.model(pixel_values=batch["pixel_values"]).loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.model(pixel_values=batch["pixel_values"]).loss)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    train = pixel_rows(processor, digits.train, digits.image_column)
    val = pixel_rows(processor, digits.validation, digits.image_column)
    callback = LightningPerceptionCallback(
        digits, model="model", image_processor=processor, subspaces=SUBSPACES
    )
    trainer = lightning.Trainer(
        max_steps=4, val_check_interval=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], default_root_dir=tmp_path,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader
    trainer.fit(
        MAE(),
        loader(train, batch_size=16, collate_fn=collate),
        loader(val, batch_size=16, collate_fn=collate),
    )

    assert [record["step"] for record in callback.history] == [2, 4]
    last = {key: value for key, value in callback.history[-1].items() if key != "step"}
    key = "layers/layer_2/cls/spectrum/effective_rank"
    assert trainer.callback_metrics[f"perception/{key}"].item() == pytest.approx(last[key], rel=1e-6)
    assert model.config.mask_ratio == 0.75
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    assert report_metrics(tmp_path / "checkpoint", digits) == pytest.approx(last, abs=1e-6, nan_ok=True)
