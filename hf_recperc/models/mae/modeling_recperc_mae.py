"""The masked autoencoder family (``model_type="recperc_mae"``), built on transformers' ViTMAE modules.

The parameter layout is ViTMAE's (``vit.embeddings``, ``vit.layers``, ``vit.layernorm``, ``decoder.*``), so a
``ViTMAEForPreTraining`` checkpoint (e.g. ``facebook/vit-mae-base``) loads into
:class:`RecPercMAEForPreTraining`; only the guidance probe (``probe.*``) is new.

* :class:`RecPercMAEModel`: a ``ViTMAEModel`` whose ``forward`` sees every patch (no masking), for feature
  extraction and probing; ``embeddings`` is the CLS token or the mean patch token (``config.pooling``).
  ``forward_masked`` is ViTMAE's own masked forward.
* :class:`RecPercMAEForPreTraining`: ViTMAE pre-training plus a linear probe on the pooled encoder output, with
  the hybrid objective ``reconstruction_loss + guidance * cross_entropy`` (docs/science.md, E3).
* :class:`RecPercMAEForImageClassification`: unmasked encoder + linear classifier.

Masking is ViTMAE's: exactly ``int(L * (1 - mask_ratio))`` patches are kept per image, chosen by ``argsort`` of
``noise``. :class:`~hf_recperc.corruption.Masking` (used by the AE family and by the linear theory) masks every
patch independently instead, so the number of masked patches varies from image to image.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import ViTMAEForPreTraining, ViTMAEModel
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.vit_mae.modeling_vit_mae import (
    ViTMAEDecoder,
    ViTMAEEmbeddings,
    ViTMAEModelOutput,
    ViTMAEPreTrainedModel,
)
from transformers.utils import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from ..ae.modeling_recperc import (
    RecPercForPreTrainingOutput,
    RecPercImageClassifierOutput,
    RecPercModelOutput,
    SavesImageProcessorMixin,
    check_pixel_values,
    classification_loss,
    hybrid_loss,
    probe_logits,
)
from .configuration_recperc_mae import RecPercMAEConfig

__all__ = [
    "RecPercMAEPreTrainedModel",
    "RecPercMAEModel",
    "RecPercMAEForPreTraining",
    "RecPercMAEForImageClassification",
]


class RecPercMAEPreTrainedModel(SavesImageProcessorMixin, ViTMAEPreTrainedModel):
    """ViTMAE's plumbing with our config class, image processor saving and a position-embedding init fix."""

    config: RecPercMAEConfig
    config_class = RecPercMAEConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    # Loading the encoder (`AutoModel`) or a classifier from a `...ForPreTraining` checkpoint is the documented
    # use: its decoder and guidance probe are expected to be left out, so transformers reports nothing for them.
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^decoder\.", r"^probe\."]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # transformers 5.24 leaves a freshly built ViTMAE with all-zero (and frozen) position embeddings, CLS and
        # mask tokens: `ViTMAEEmbeddings.initialize_weights` returns early because the children-first traversal
        # has already flagged the patch projection as initialised, and `ViTMAEPreTrainedModel._init_weights`
        # zeroes the decoder's sin-cos table. We re-run ViTMAE's own initialisers. The `transformers.initialization`
        # functions they use skip tensors loaded from a checkpoint, so loading is unaffected.
        if isinstance(module, ViTMAEEmbeddings):
            module.patch_embeddings.projection._is_hf_initialized = False
            module.initialize_weights()
            module.patch_embeddings.projection._is_hf_initialized = True
        elif isinstance(module, ViTMAEDecoder):
            module.initialize_weights(num_patches=module.decoder_pos_embed.shape[1] - 1)

    def get_embeddings(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """Pooled encoder output `(batch_size, hidden_size)` of the full, unmasked images
        `(batch_size, num_channels, height, width)`."""
        return self.base_model(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True
        ).embeddings

    # Layer probes (hf_recperc.monitors.layers): one CLS token leads every token sequence.
    num_prefix_tokens = 1

    @property
    def default_poolings(self) -> tuple[str, ...]:
        """The pooling the model's own embeddings use (``config.pooling``)."""
        return (self.config.pooling,)

    @property
    def num_hidden_layers(self) -> int:
        return self.config.num_hidden_layers

    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Full, unmasked images -> `(embeddings, block_1, ..., block_L)`, each `(B, 1 + num_patches, D)`."""
        return self.base_model(
            pixel_values=pixel_values, output_hidden_states=True, return_dict=True
        ).hidden_states


class RecPercMAEModel(RecPercMAEPreTrainedModel, ViTMAEModel):
    """ViTMAE's encoder with masking switched off in ``forward``: every patch, in place, for feature extraction.

    Same submodules and parameter names as :class:`~transformers.ViTMAEModel`. ``forward_masked`` runs ViTMAE's
    masked forward (used by :class:`RecPercMAEForPreTraining`).

    Args:
        config (:class:`~hf_recperc.RecPercMAEConfig`): the model configuration.
    """

    # transformers' output capture, as ViTMAEModel: hooks on the layers record `hidden_states` (the embedding output,
    # then each layer's, before the final layer norm) and `attentions`; `output_*` keywords default to the config,
    # `output_hidden_states` may select indices, `return_dict=False` gives a tuple.
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> RecPercModelOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`).
            interpolate_pos_encoding (`bool`, *optional*): accept other image sizes by interpolating the
                position embeddings.
            output_hidden_states (`bool` or `int` or `list[int]`, *optional*): also return the embedding output
                and every block's output (`hidden_states`, each `(batch_size, 1 + num_patches, hidden_size)`, before
                the final layer norm), or only the selected indices; defaults to `config.output_hidden_states`.
            output_attentions (`bool`, *optional*): also return each layer's attention weights (eager attention);
                defaults to `config.output_attentions`.
            return_dict (`bool`, *optional*): `False` returns a tuple; defaults to `config.return_dict`.

        Returns:
            :class:`~hf_recperc.models.ae.modeling_recperc.RecPercModelOutput` with `embeddings` / `pooler_output`
            `(batch_size, hidden_size)` and `last_hidden_state` `(batch_size, 1 + num_patches, hidden_size)`.
        """
        check_pixel_values(
            pixel_values,
            self.config.num_channels,
            None if interpolate_pos_encoding else self.config.image_size,
        )
        embeddings_module = self.embeddings
        height, width = pixel_values.shape[-2:]
        # ViTMAEEmbeddings.forward without its random_masking step (which, even at mask_ratio 0, shuffles the
        # patches): patch projection, position embeddings, CLS token first. tests/test_models_mae.py checks this
        # against ViTMAEModel with mask_ratio=0 and an order-preserving noise.
        patches = embeddings_module.patch_embeddings(pixel_values)  # (B, L, D)
        if interpolate_pos_encoding:
            position = embeddings_module.interpolate_pos_encoding(patches, height, width)  # (1, 1 + L, D)
        else:
            position = embeddings_module.position_embeddings  # (1, 1 + L, D)
        cls_token = (embeddings_module.cls_token + position[:, :1]).expand(
            patches.shape[0], -1, -1
        )  # (B, 1, D)
        hidden_states = torch.cat([cls_token, patches + position[:, 1:]], dim=1)  # (B, 1 + L, D)
        for layer in self.layers:
            hidden_states = layer(hidden_states)  # no attention mask: every token sees every token
        last_hidden_state = self.layernorm(hidden_states)  # (B, 1 + L, D)
        embeddings = self.pool(last_hidden_state)  # (B, D)
        return RecPercModelOutput(
            embeddings=embeddings, pooler_output=embeddings, last_hidden_state=last_hidden_state
        )

    def forward_masked(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> ViTMAEModelOutput:
        """ViTMAE's masked forward: `last_hidden_state` `(B, 1 + L_keep, D)`, `mask` `(B, L)`, `ids_restore`, and
        the `hidden_states` / `attentions` that ``kwargs`` (or the config) ask for. Always a ``ViTMAEModelOutput``,
        whatever ``config.return_dict`` says (the callers read its fields)."""
        kwargs["return_dict"] = True
        return super().forward(
            pixel_values, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(B, 1 + L, D)` -> `(B, D)`: the CLS token, or the mean of the other tokens (``config.pooling``)."""
        if self.config.pooling == "mean":
            return hidden_states[:, 1:].mean(dim=1)
        return hidden_states[:, 0]


class RecPercMAEForPreTraining(RecPercMAEPreTrainedModel):
    """ViTMAE pre-training with a guidance probe: the hybrid objective of docs/science.md, E3 on a masked autoencoder.

    ``loss = reconstruction_loss + guidance * cross_entropy(probe(pooled encoder output), labels)``, where the
    reconstruction loss is ViTMAE's (per-patch MSE, ``norm_pix_loss`` optional) on the masked patches or on all
    of them (``config.reconstruction_target``). With ``guidance == 0`` the probe trains on the detached embedding
    and ``loss`` equals ``reconstruction_loss`` (see :func:`~hf_recperc.models.ae.modeling_recperc.hybrid_loss`).

    Args:
        config (:class:`~hf_recperc.RecPercMAEConfig`): the model configuration.
    """

    # ViTMAE's (B, C, H, W) <-> (B, L, p*p*C) conversions only read `self.config`; reuse them as they are.
    patchify = ViTMAEForPreTraining.patchify
    unpatchify = ViTMAEForPreTraining.unpatchify

    def __init__(self, config: RecPercMAEConfig):
        super().__init__(config)
        self.vit = RecPercMAEModel(config)
        self.decoder = ViTMAEDecoder(config, num_patches=self.vit.embeddings.patch_embeddings.num_patches)
        self.probe = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> RecPercForPreTrainingOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`).
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): classes in `[0, num_labels)`.
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*): ViTMAE's masking noise;
                the patches with the smallest values are kept. Drawn uniformly when omitted.
            interpolate_pos_encoding (`bool`, *optional*): accept other (square) image sizes.
            output_hidden_states, output_attentions (*optional*): the encoder's on the visible patches, as
                ViTMAEForPreTraining returns them; default to the config's.
            return_dict (`bool`, *optional*): `False` returns a tuple; defaults to `config.return_dict`.

        Returns:
            :class:`~hf_recperc.models.ae.modeling_recperc.RecPercForPreTrainingOutput`; `mask` is ViTMAE's patch mask of
            shape `(batch_size, num_patches)`, 1 for masked patches.
        """
        self._check_inputs(pixel_values, noise, interpolate_pos_encoding)
        outputs = self.vit.forward_masked(
            pixel_values, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        latent = outputs.last_hidden_state  # (B, 1 + L_keep, D)
        predictions = self.decoder(
            latent, outputs.ids_restore, interpolate_pos_encoding=interpolate_pos_encoding
        ).logits  # (B, L, p*p*C)
        embeddings = self.vit.pool(latent)  # (B, D), from the visible patches only
        logits = probe_logits(self.probe, embeddings, self.config.guidance)  # (B, num_labels)
        loss, reconstruction_loss, supervised_loss = self.forward_loss(
            pixel_values,
            predictions,
            outputs.mask,
            logits,
            labels,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        return RecPercForPreTrainingOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            supervised_loss=supervised_loss,
            logits=logits,
            reconstruction=self.to_image(predictions, pixel_values, interpolate_pos_encoding),
            embeddings=embeddings,
            mask=outputs.mask,
            pixel_mask=self.pixel_mask(outputs.mask, pixel_values.shape[-2:]),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _check_inputs(self, pixel_values, noise, interpolate_pos_encoding) -> None:
        """One-line errors for pixel values of the wrong shape and ``noise`` not `(batch_size, num_patches)`."""
        check_pixel_values(
            pixel_values,
            self.config.num_channels,
            None if interpolate_pos_encoding else self.config.image_size,
        )
        if noise is None:
            return
        patches = (pixel_values.shape[2] // self.config.patch_size) * (
            pixel_values.shape[3] // self.config.patch_size
        )
        if tuple(noise.shape) != (pixel_values.shape[0], patches):
            raise ValueError(
                f"noise: expected shape (batch_size, num_patches) = ({pixel_values.shape[0]}, {patches}), "
                f"got {tuple(noise.shape)}"
            )

    def pixel_mask(self, mask: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """ViTMAE's patch mask `(B, L)` (1 = masked) -> `(B, 1, H, W)` booleans, True on masked pixels."""
        patch = self.config.patch_size
        height, width = image_size
        grid = mask.reshape(mask.shape[0], 1, height // patch, width // patch)  # (B, 1, h, w)
        return grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3).bool()  # (B, 1, H, W)

    def sample_forward_randomness(self, pixel_values: torch.Tensor, generator: torch.Generator) -> dict:
        """The keyword arguments that make ``forward`` deterministic: ViTMAE's masking noise `(B, L)`."""
        batch_size, _, height, width = pixel_values.shape
        num_patches = (height // self.config.patch_size) * (width // self.config.patch_size)
        return {"noise": torch.rand(batch_size, num_patches, generator=generator, device=pixel_values.device)}

    def reconstruction_for_metrics(
        self, pixel_values: torch.Tensor, outputs: RecPercForPreTrainingOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked patches predicted, visible patches copied from the input, scored on the masked patches only (a
        ViT MAE is never asked to reconstruct unmasked images).

        Returns:
            ``(reconstruction, weight)``: `(B, C, H, W)` and `(B, 1, H, W)` with 1 on the masked pixels.
        """
        masked = outputs.pixel_mask
        return torch.where(masked, outputs.reconstruction, pixel_values), masked.to(pixel_values.dtype)

    def outputs_for_metrics(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        embeddings: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, weight, logits)`` the evaluation scores: one masked forward of ``pixel_values``
        `(B, C, H, W)` with noise from ``generator``, then :meth:`reconstruction_for_metrics`. ``embeddings`` (the
        clean ones) are not needed: every output comes from the masked forward.

        Returns:
            reconstruction `(B, C, H, W)`, weight `(B, 1, H, W)`, logits `(B, num_labels)`.
        """
        randomness = self.sample_forward_randomness(pixel_values, generator)
        outputs = self(pixel_values=pixel_values, labels=labels, **randomness)
        reconstruction, weight = self.reconstruction_for_metrics(pixel_values, outputs)
        return reconstruction, weight, outputs.logits

    def patch_targets(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = None):
        """`(target, mean, std)`: patchified pixels `(B, L, p*p*C)`, normalised per patch when
        ``config.norm_pix_loss`` (ViTMAE's recipe, eps 1e-6 on the variance); `mean`/`std` are `(B, L, 1)` or
        `None`."""
        target = self.patchify(
            pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding)
        )  # (B, L, P)
        if not self.config.norm_pix_loss:
            return target, None, None
        mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
        std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5  # (B, L, 1)
        return (target - mean) / std, mean, std

    def forward_loss(
        self,
        pixel_values: torch.Tensor,
        predictions: torch.Tensor,
        mask: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        interpolate_pos_encoding: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The hybrid loss.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): clean images.
            predictions (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`):
                the decoder's per-patch pixel predictions.
            mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`): 1 for masked patches.
            logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): probe output.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*).

        Returns:
            `(loss, reconstruction_loss, supervised_loss)`; `supervised_loss` is `None` without labels. With
            `reconstruction_target="masked"` the reconstruction loss is ViTMAE's to the last bit.
        """
        target, _, _ = self.patch_targets(pixel_values, interpolate_pos_encoding)
        error = ((predictions - target) ** 2).mean(dim=-1)  # (B, L): per-patch MSE
        if self.config.reconstruction_target == "masked":
            # clamp: an all-visible batch (mask_ratio rounding) contributes 0, not 0 / 0.
            reconstruction_loss = (error * mask).sum() / mask.sum().clamp_min(1.0)
        else:
            reconstruction_loss = error.mean()
        loss, supervised_loss = hybrid_loss(reconstruction_loss, logits, labels, self.config.guidance)
        return loss, reconstruction_loss, supervised_loss

    def to_image(
        self,
        predictions: torch.Tensor,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
    ) -> torch.Tensor:
        """Per-patch predictions `(B, L, p*p*C)` as images `(B, C, H, W)`; with ``norm_pix_loss`` each patch is
        mapped back to pixel units with the mean and std of the corresponding clean patch (as MAE demos do)."""
        if self.config.norm_pix_loss:
            with torch.no_grad():
                _, mean, std = self.patch_targets(pixel_values, interpolate_pos_encoding)
            predictions = predictions * std + mean  # (B, L, p*p*C)
        return self.unpatchify(predictions, tuple(pixel_values.shape[2:]))


class RecPercMAEForImageClassification(RecPercMAEPreTrainedModel):
    """Unmasked ViTMAE encoder + linear classifier on the pooled output (``config.pooling``).

    Loading a :class:`RecPercMAEForPreTraining` or ``ViTMAEForPreTraining`` checkpoint keeps the encoder and starts
    a new classifier.

    Args:
        config (:class:`~hf_recperc.RecPercMAEConfig`): the model configuration.
    """

    def __init__(self, config: RecPercMAEConfig):
        super().__init__(config)
        self.vit = RecPercMAEModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> RecPercImageClassifierOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`).
            labels (`torch.Tensor`, *optional*): by `config.problem_type` (see
                :func:`~hf_recperc.models.ae.modeling_recperc.check_classification_labels`).
            interpolate_pos_encoding (`bool`, *optional*): accept other image sizes.
            output_hidden_states, output_attentions (*optional*): the encoder's (see :meth:`RecPercMAEModel.forward`).
            return_dict (`bool`, *optional*): `False` returns a tuple; defaults to `config.return_dict`.

        Returns:
            :class:`~hf_recperc.models.ae.modeling_recperc.RecPercImageClassifierOutput`.
        """
        kwargs["return_dict"] = True
        outputs = self.vit(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        logits = self.classifier(outputs.embeddings)  # (B, num_labels)
        return RecPercImageClassifierOutput(
            loss=classification_loss(self, logits, labels),
            logits=logits,
            embeddings=outputs.embeddings,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# transformers 5 renamed ViTMAE's weights (`encoder.layer.N.attention.attention.query` -> `layers.N.attention.q_proj`,
# ...) and converts on load and back on save, looked up by class name; custom classes get no conversion unless
# registered. Registering ViTMAE's own rules under our class names lets `facebook/vit-mae-*` and locally saved
# ViTMAE checkpoints load, and makes our checkpoints use ViTMAE's on-disk names.
for _ours, _theirs in (
    ("RecPercMAEForPreTraining", "ViTMAEForPreTraining"),
    ("RecPercMAEModel", "ViTMAEModel"),
):
    register_checkpoint_conversion_mapping(_ours, get_checkpoint_conversion_mapping(_theirs), overwrite=True)
