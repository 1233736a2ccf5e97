"""Model families: one package + one registration, served by one registry (Citizen 11)."""

import importlib
import sys
import textwrap
from pathlib import Path

import pytest
import transformers
from huggingface_hub import ModelCard
from test_cards import make_results

import hf_recperc.models as families_registry
from hf_recperc.cards import render_model_card
from hf_recperc.images import load_image_dataset
from hf_recperc.models import get_family, preset_for_data
from hf_recperc.training import ModelArguments
from hf_recperc.training.builders import build_model
from hf_recperc.training.output_dir import pretrain_outputs

# A third-party family: a module of its own and one register_family call, nothing else anywhere.
TOY_FAMILY = textwrap.dedent(
    """
    from typing import ClassVar

    from hf_recperc.models import FamilySpec, register_family
    from hf_recperc.models.ae.configuration_recperc import RecPercAEConfig
    from hf_recperc.models.ae.modeling_recperc import (
        RecPercAEForImageClassification,
        RecPercAEForPreTraining,
        RecPercAEModel,
    )
    from hf_recperc.processing import RecPercImageProcessor


    class ToyConfig(RecPercAEConfig):
        model_type = "recperc_toy"
        _presets: ClassVar[dict] = {
            "toy-tiny": dict(encoder="mlp", image_size=8, num_channels=1, latent_dim=4, depth=1, num_labels=10)
        }


    class ToyModel(RecPercAEModel):
        config_class = ToyConfig


    class ToyForPreTraining(RecPercAEForPreTraining):
        config_class = ToyConfig


    class ToyForImageClassification(RecPercAEForImageClassification):
        config_class = ToyConfig


    SPEC = register_family(
        FamilySpec(
            name="toy",
            config_class=ToyConfig,
            model_classes={
                "AutoModel": ToyModel,
                "AutoModelForPreTraining": ToyForPreTraining,
                "AutoModelForImageClassification": ToyForImageClassification,
            },
            image_processor_class=RecPercImageProcessor,
            card_tags=("toy-autoencoder",),
            card_description=lambda corruption: "A toy autoencoder",
            describe_corruption=lambda config: config.corruption,
            corruption_field=None,
            corruption_hint="the toy family takes no input noise",
        )
    )
    """
)


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    """Import the toy family module (which registers it); the registry is restored afterwards."""
    (tmp_path / "toy_family.py").write_text(TOY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(families_registry, "_FAMILIES", dict(families_registry._FAMILIES))
    monkeypatch.delitem(sys.modules, "toy_family", raising=False)
    yield importlib.import_module("toy_family")
    sys.modules.pop("toy_family", None)


def test_a_registered_family_is_served_to_arguments_builders_output_dir_cards_and_auto_classes(
    toy_family, tmp_path
):
    """Citizen 11: registering a family (one module + one call) is all the trainer's arguments and builders, the
    output directory's remote-code list, the model card and transformers' Auto classes need."""
    assert get_family("toy") is toy_family.SPEC
    # arguments: the family's presets and its own corruption rule
    ModelArguments(model_family="toy", preset="toy-tiny")
    with pytest.raises(ValueError, match=r"preset: 'digits-mlp' is not a toy preset; known: \('toy-tiny',\)"):
        ModelArguments(model_family="toy", preset="digits-mlp")
    with pytest.raises(ValueError, match="corruption: the toy family takes no input noise"):
        ModelArguments(model_family="toy", corruption="gaussian:0.1")
    # builders: the preset that fits the data, the family's pre-training class
    assert preset_for_data("toy", 8, 1) == "toy-tiny"
    model = build_model(ModelArguments(model_family="toy"), load_image_dataset())
    assert type(model) is toy_family.ToyForPreTraining and model.config.latent_dim == 4
    # output_dir: the family's remote-code file is a name the trainer publishes
    assert "toy_family.py" in toy_family.SPEC.remote_code_files
    assert "toy_family.py" in pretrain_outputs().names
    # cards: the family's tags and description
    card = render_model_card(make_results(model_family="toy"))
    card.save(tmp_path / "README.md")
    assert "toy-autoencoder" in ModelCard.load(tmp_path / "README.md").data.tags
    assert "A toy autoencoder" in card.text
    # transformers: Auto classes without trust_remote_code, and the auto_map of the saved code
    model.save_pretrained(tmp_path / "toy")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "toy")
    assert config.auto_map["AutoModel"] == "toy_family.ToyModel"
    assert type(transformers.AutoModel.from_pretrained(tmp_path / "toy")) is toy_family.ToyModel
    assert (tmp_path / "toy" / "toy_family.py").is_file()


def test_an_unknown_family_is_an_error_naming_the_registered_ones():
    """Citizen 11: the registry is the one list of families; a name it lacks is a one-line error."""
    with pytest.raises(ValueError, match=r"^model_family: expected one of \('ae', 'mae'\), got 'vae'$"):
        ModelArguments(model_family="vae")
    with pytest.raises(ValueError, match=r"results\['run'\]\['family'\]: expected one of \('ae', 'mae'\)"):
        render_model_card(make_results(model_family="vae"))


def test_no_other_library_is_patched_at_import():
    """Citizen 11: hf_recperc installs no import hook and leaves transformers' Auto classes' methods as they are."""
    import hf_recperc  # noqa: F401

    assert not [finder for finder in sys.meta_path if type(finder).__module__.startswith("hf_recperc")]
    for auto in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoImageProcessor):
        code = auto.from_pretrained.__func__.__code__  # a wrapper would carry hf_recperc's code
        assert "transformers" in Path(code.co_filename).parts, (auto, code.co_filename)
