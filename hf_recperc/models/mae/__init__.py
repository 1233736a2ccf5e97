"""The masked autoencoder family, ``--model_family mae`` (``model_type="recperc_mae"``): transformers' ViTMAE plus a
guidance probe; ``ViTMAEForPreTraining`` checkpoints load as they are."""

from ...processing import RecPercImageProcessor
from .. import FamilySpec, register_family
from .configuration_recperc_mae import RecPercMAEConfig
from .modeling_recperc_mae import RecPercMAEForImageClassification, RecPercMAEForPreTraining, RecPercMAEModel

SPEC = register_family(
    FamilySpec(
        name="mae",
        config_class=RecPercMAEConfig,
        model_classes={
            "AutoModel": RecPercMAEModel,
            "AutoModelForPreTraining": RecPercMAEForPreTraining,
            "AutoModelForImageClassification": RecPercMAEForImageClassification,
        },
        image_processor_class=RecPercImageProcessor,
        card_tags=("masked-autoencoder",),
        card_description=lambda corruption: "A masked autoencoder (ViT MAE)",
        describe_corruption=lambda config: f"vit-mae mask_ratio={config.mask_ratio}",
        corruption_field=None,
        corruption_hint="the mae family masks patches itself (ViTMAE's mask_ratio); "
        "use --config_overrides mask_ratio=0.75",
    )
)
