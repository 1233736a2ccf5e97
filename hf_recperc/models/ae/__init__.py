"""The autoencoder family, ``--model_family ae`` (``model_type="recperc_ae"``): (denoising) autoencoders with an MLP,
a DCAE-style convolutional or any timm CNN encoder (docs/science.md section 5)."""

from ...processing import RecPercImageProcessor
from .. import FamilySpec, register_family
from .configuration_recperc import RecPercAEConfig
from .modeling_recperc import RecPercAEForImageClassification, RecPercAEForPreTraining, RecPercAEModel

SPEC = register_family(
    FamilySpec(
        name="ae",
        config_class=RecPercAEConfig,
        model_classes={
            "AutoModel": RecPercAEModel,
            "AutoModelForPreTraining": RecPercAEForPreTraining,
            "AutoModelForImageClassification": RecPercAEForImageClassification,
        },
        image_processor_class=RecPercImageProcessor,
        card_tags=("autoencoder",),
        card_description=lambda corruption: (
            "An autoencoder" if corruption == "none" else "A denoising autoencoder"
        ),
        describe_corruption=lambda config: config.corruption,
    )
)
