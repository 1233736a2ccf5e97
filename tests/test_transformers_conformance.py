"""transformers' own model tests (``ModelTesterMixin``) and config tests (``ConfigTester``) run on our classes.

One tester per family and encoder kind (MLP, conv, timm AE; MAE), modelled on transformers' ViTMAE tester. The
mixins are vendored from the transformers 5.24.0 sdist (tests/transformers_testers/NOTICE.md). Where a peer test's
assumption does not hold for our models, the override or skip below says why; every other test of the mixin runs
as transformers runs it on its own models (tests that need a GPU, DeepSpeed, flash attention or the Hub skip
themselves with the library's own reason).

Citizen 1-5 (output flags from the config, attentions, ``return_dict=False``, selected hidden states, problem
types) are covered here by the library's tests: ``test_hidden_states_output``, ``test_attention_outputs``,
``test_model_outputs_equivalence``, ``test_can_capture_specific_layers_hidden_states``, ``test_problem_types``.
"""

import unittest

import torch
from conftest import TINY_MAE
from transformers_testers.test_configuration_common import ConfigTester
from transformers_testers.test_modeling_common import ModelTesterMixin, floats_tensor

from hf_recperc import (
    RecPercAEConfig,
    RecPercAEForImageClassification,
    RecPercAEForPreTraining,
    RecPercAEModel,
    RecPercMAEConfig,
    RecPercMAEForImageClassification,
    RecPercMAEForPreTraining,
    RecPercMAEModel,
)

# Encoder kind -> a tiny configuration (timm: the 0.4M-parameter test ResNet of timm's own tests).
AE_ENCODERS = {
    "mlp": dict(encoder="mlp", image_size=8, num_channels=1, latent_dim=6, depth=2),
    "conv": dict(encoder="conv", image_size=9, num_channels=2, latent_dim=6, depth=2, width=4),
    "timm": dict(encoder="timm:test_resnet", image_size=16, num_channels=3, latent_dim=6, width=8),
}
MAE_TINY = TINY_MAE
MAE_TINY_MASK_RATIO = 0.75  # ViTMAEConfig's default


class _Tester:
    """What ``ModelTesterMixin`` reads from ``self.model_tester``: a config, inputs and the expected sizes."""

    batch_size = 3
    num_labels = 3
    is_training = True

    def __init__(self, parent, config_class, fields: dict):
        self.parent = parent
        self.config_class = config_class
        self.fields = dict(fields)
        self.image_size = fields["image_size"]
        self.num_channels = fields["num_channels"]

    def get_config(self):
        return self.config_class(**self.fields, num_labels=self.num_labels)

    def prepare_config_and_inputs_for_common(self):
        shape = [self.batch_size, self.num_channels, self.image_size, self.image_size]
        return self.get_config(), {"pixel_values": floats_tensor(shape)}


class AETester(_Tester):
    """Hidden states of the AE family are `(input image, block_1, ..., block_L)`. The mixin compares the last two
    dimensions of `hidden_states[0]` with `(seq_length, hidden_size)`: for images that is `(height, width)`."""

    def __init__(self, parent, encoder: str):
        super().__init__(parent, RecPercAEConfig, AE_ENCODERS[encoder])
        self.seq_length = self.hidden_size = self.image_size
        self.num_hidden_layers = RecPercAEModel(self.get_config()).num_hidden_layers  # encoder blocks


class MAETester(_Tester):
    """Our ``RecPercMAEModel`` sees every patch (no masking), so its sequence is `1 + num_patches` tokens."""

    def __init__(self, parent):
        super().__init__(parent, RecPercMAEConfig, MAE_TINY)
        self.hidden_size = MAE_TINY["hidden_size"]
        self.num_hidden_layers = MAE_TINY["num_hidden_layers"]
        self.num_attention_heads = MAE_TINY["num_attention_heads"]
        self.patch_size = MAE_TINY["patch_size"]
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.seq_length = 1 + self.num_patches


class _RecPercModelTest(ModelTesterMixin):
    """Shared overrides, each with the reason the peer test's assumption does not apply."""

    # Our models take images, not tokens: there is no token embedding to resize (ViTMAE's tester says the same).
    test_resize_embeddings = False
    # `torch.export` of our models is not a supported use (the vendored mixin carries no export tests).
    test_torch_exportable = False
    base_class = pretraining_class = None

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """The mixin knows which inputs a class takes from transformers' Auto mappings, where our class names are
        absent: labels for the classifier (and the guided pre-training probe), and the randomness of pre-training
        (ViTMAE's `noise`, the AE corruption's `generator`) fixed so that two calls give the same outputs."""
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        batch_size = inputs["pixel_values"].shape[0]
        if return_labels and model_class is not self.base_class:
            inputs["labels"] = torch.zeros(batch_size, dtype=torch.long)
        if model_class is self.pretraining_class:
            inputs.update(self.forward_randomness(batch_size))
        return inputs

    def forward_randomness(self, batch_size: int) -> dict:
        return {}

    def test_config(self):
        self.config_tester.run_common_tests()

    def _on_heads(self, test, *args):
        """The peer training tests skip base models by looking their names up in transformers'
        `MODEL_MAPPING_NAMES`, where ours are absent; the encoder-only model has no loss, so they run on the two
        heads only."""
        saved = self.all_model_classes
        self.all_model_classes = saved[1:]
        try:
            test(*args)
        finally:
            self.all_model_classes = saved

    def test_training(self):
        """See `_on_heads`."""
        self._on_heads(super().test_training)

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        """See `_on_heads` (the three `test_training_gradient_checkpointing*` tests call this)."""
        self._on_heads(super().check_training_gradient_checkpointing, gradient_checkpointing_kwargs)

    @unittest.skip(reason="image models: there is no `inputs_embeds` (as in transformers' ViTMAE tests)")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(
        reason="image models: there is no `input_ids` and so no `inputs_embeds` (as ViTMAE's tests)"
    )
    def test_inputs_embeds_matches_input_ids(self):
        pass


class RecPercAEModelTestBase(_RecPercModelTest):
    all_model_classes = (RecPercAEModel, RecPercAEForPreTraining, RecPercAEForImageClassification)
    base_class, pretraining_class = RecPercAEModel, RecPercAEForPreTraining
    # An autoencoder has no attention layers (transformers' own CNNs, e.g. ResNet's tester, set the same).
    has_attentions = False
    encoder = "conv"

    def setUp(self):
        self.model_tester = AETester(self, self.encoder)
        self.config_tester = ConfigTester(
            self,
            config_class=RecPercAEConfig,
            has_text_modality=False,
            common_properties=["latent_dim", "num_channels", "image_size"],
            **{**AE_ENCODERS[self.encoder], "latent_dim": 7},
        )

    def forward_randomness(self, batch_size: int) -> dict:
        return {"generator": torch.Generator().manual_seed(0)}

    def test_model_get_set_embeddings(self):
        """The peer test asks `get_input_embeddings()` for a token `nn.Embedding`; an autoencoder has no input
        embedding layer at all (transformers' ResNet tester skips it for the same reason)."""
        self.skipTest("an autoencoder has no input embedding layer (as transformers' ResNet)")

    def _prepare_config_and_inputs_for_retain_grad_hidden_states_attentions(self):
        """`hidden_states[0]` of the AE family is the input image itself (no embedding stage, see
        `RecPercModelOutput`); the mixin's hook lets the input require a gradient so the test can check it."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs["pixel_values"].requires_grad_(True)
        return config, inputs


class RecPercMLPAEModelTest(RecPercAEModelTestBase, unittest.TestCase):
    encoder = "mlp"


class RecPercConvAEModelTest(RecPercAEModelTestBase, unittest.TestCase):
    encoder = "conv"


class RecPercTimmAEModelTest(RecPercAEModelTestBase, unittest.TestCase):
    encoder = "timm"

    def test_num_layers_is_small(self):
        """The peer test bounds a configurable depth at 2 layers to keep tests fast; a timm backbone's stages are
        fixed by its architecture (timm's 0.4M-parameter `test_resnet` has more); `test_model_is_small` still
        bounds its size."""
        self.assertGreater(self.model_tester.num_hidden_layers, 2)
        self.skipTest("a timm architecture fixes its number of stages")


class RecPercMAEModelTest(_RecPercModelTest, unittest.TestCase):
    all_model_classes = (RecPercMAEModel, RecPercMAEForPreTraining, RecPercMAEForImageClassification)
    base_class, pretraining_class = RecPercMAEModel, RecPercMAEForPreTraining

    def setUp(self):
        self.model_tester = MAETester(self)
        self.config_tester = ConfigTester(
            self, config_class=RecPercMAEConfig, has_text_modality=False, **{**MAE_TINY, "hidden_size": 36}
        )

    def forward_randomness(self, batch_size: int) -> dict:
        generator = torch.Generator().manual_seed(0)
        return {"noise": torch.rand(batch_size, self.model_tester.num_patches, generator=generator)}

    def _sequence_length(self, model_class) -> int:
        """Tokens the encoder sees: every patch, or (pre-training) ViTMAE's kept ones, plus the CLS token."""
        if model_class is RecPercMAEForPreTraining:
            kept = self.model_tester.num_patches - int(self.model_tester.num_patches * MAE_TINY_MASK_RATIO)
            return 1 + kept
        return 1 + self.model_tester.num_patches

    def _run_per_class(self, test):
        """Run a peer test once per class with that class's sequence length (see `_sequence_length`)."""
        saved_classes, saved_length = self.all_model_classes, self.model_tester.seq_length
        try:
            for model_class in saved_classes:
                with self.subTest(model_class.__name__):
                    self.all_model_classes = (model_class,)
                    self.model_tester.seq_length = self._sequence_length(model_class)
                    test()
        finally:
            self.all_model_classes, self.model_tester.seq_length = saved_classes, saved_length

    def test_hidden_states_output(self):
        """ViTMAE's tester has one sequence length for all classes because all of ViTMAE's classes mask; ours
        mask only in pre-training (the encoder and the classifier see every patch), so the peer test runs per
        class with that class's length."""
        self._run_per_class(super().test_hidden_states_output)

    def test_attention_outputs(self):
        """As `test_hidden_states_output`: one sequence length per class."""
        self._run_per_class(super().test_attention_outputs)

    def test_model_outputs_equivalence(self):
        """The peer test builds its failure message with `tuple_value - dict_value` before asserting, which torch
        refuses for boolean tensors; our pre-training output has one (`pixel_mask`, ViTMAE's outputs have none).
        The peer test runs on the other classes; pre-training gets the same check with `torch.equal`."""
        saved = self.all_model_classes
        self.all_model_classes = tuple(c for c in saved if c is not RecPercMAEForPreTraining)
        try:
            super().test_model_outputs_equivalence()
        finally:
            self.all_model_classes = saved
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        model = RecPercMAEForPreTraining(config).eval()
        for extra in ({}, {"output_hidden_states": True}, {"output_attentions": True}):
            for return_labels in (False, True):
                inputs = self._prepare_for_class(inputs_dict, RecPercMAEForPreTraining, return_labels)
                with torch.no_grad():
                    as_tuple = model(**inputs, **extra, return_dict=False)
                    as_dict = model(**inputs, **extra, return_dict=True).to_tuple()
                self.assertEqual(len(as_tuple), len(as_dict))
                for a, b in zip(
                    torch.utils._pytree.tree_leaves(as_tuple), torch.utils._pytree.tree_leaves(as_dict)
                ):
                    self.assertTrue(torch.equal(a, b))

    def test_model_get_set_embeddings(self):
        """The peer test asks for a token `nn.Embedding`; the input embedding of a ViT is its patch projection, an
        `nn.Module` (transformers' ViTMAE tester overrides the test with the same check)."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, torch.nn.Linear))
