"""Model cards: the template renders, the YAML parses, model-index holds one result per probe subspace."""

import copy

import pytest
from huggingface_hub import ModelCard

from hf_recperc.cards import CITATION, DEFAULT_TEMPLATE, model_index_results, render_model_card
from hf_recperc.training import DataArguments, ModelArguments, PretrainingArguments

SUBSPACES = ["top:0.9", "bottom:0.2", "all"]


def make_results(**args_overrides):
    """A results.json as hf_recperc.training.train writes it (arguments from the real dataclasses)."""
    args = {
        **vars(DataArguments()),
        **vars(ModelArguments()),
        **vars(PretrainingArguments(output_dir="outputs/recperc-test")),
        **args_overrides,
    }
    results = {
        "step": 660,
        "epoch": 30.0,
        "train/loss": 0.21,
        "train/reconstruction_loss": 0.2,
        "train/supervised_loss": 1.0,
        "eval/reconstruction_mse": 0.1234567,
        "eval/online_probe_accuracy": 0.81,
        "args": args,
        "versions": {
            "hf_recperc": "0.1.0",
            "torch": "2",
            "transformers": "5",
            "accelerate": "1",
            "datasets": "5",
        },
        "run": {
            "family": args["model_family"],
            "model_type": "recperc_ae",
            "num_parameters": 10970,
            "dataset": args["dataset_name"] or "digits",
            "num_train": 1437,
            "num_validation": 360,
            "label_names": [str(i) for i in range(10)],
            "num_processes": 1,
            "total_batch_size": 64,
            "effective_learning_rate": 1e-3,
            "max_steps": 660,
            "runtime_seconds": 60.0,
            "device": "cpu",
            "mixed_precision": "no",
            "corruption": "none",
            "guidance": 0.01,
            "spectral_band_dims": [4, 8, 8, 12, 32],
        },
    }
    for index, spec in enumerate(SUBSPACES):
        results[f"eval/subspace_probe/accuracy/{spec}"] = 0.5 + 0.1 * index
        results[f"eval/subspace_probe/dims/{spec}"] = 4 * (index + 1)
        results[f"eval/subspace_probe/explained_variance/{spec}"] = 0.3 * (index + 1)
    for band in ("0.00-0.50", "0.50-0.80", "0.80-0.90", "0.90-0.97", "0.97-1.00"):
        results[f"eval/band_error/{band}"] = 0.25
    return results


def test_card_yaml_parses_with_probe_results_in_model_index(tmp_path):
    results = make_results()
    render_model_card(
        results, hub_model_id="someone/recperc-digits", figures={"curves": "probe_accuracy.png"}
    ).save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert {"hf_recperc", "autoencoder"} <= set(card.data.tags)
    assert card.data.model_name == "recperc-digits"
    by_config = {result.metric_config: result for result in card.data.eval_results}
    for spec in SUBSPACES:
        result = by_config[spec]
        assert result.metric_type == "accuracy"
        assert result.metric_value == pytest.approx(results[f"eval/subspace_probe/accuracy/{spec}"])
        assert result.dataset_split == "validation"
        assert spec in result.metric_name
    assert by_config["online"].metric_value == pytest.approx(0.81)
    mse = [r for r in card.data.eval_results if r.metric_type == "mse"]
    assert len(mse) == 1 and mse[0].metric_value == pytest.approx(0.123457)
    # Local / embedded data and a fresh model: no Hub data set id, no base model.
    assert card.data.datasets is None and card.data.base_model is None


def test_card_text_states_objective_results_usage_and_citation():
    text = render_model_card(make_results(guidance=0.01), hub_model_id="someone/recperc-digits").text
    assert "g = 0.01" in text
    assert "0.12346" in text  # reconstruction MSE in the results table
    for spec in SUBSPACES:
        assert f"`{spec}`" in text
    assert 'AutoModel.from_pretrained("someone/recperc-digits")' in text
    assert "trust_remote_code=True" in text
    assert "## Limitations" in text
    assert CITATION in text and "2402.11337" in text
    assert "More Information Needed" not in text  # not transformers' / huggingface_hub's default template


def test_hub_dataset_and_base_model_metadata():
    results = make_results(dataset_name="uoft-cs/cifar10", model_name_or_path="facebook/vit-mae-base")
    results["run"]["family"] = "mae"
    card = render_model_card(results)
    assert card.data.datasets == ["uoft-cs/cifar10"]
    assert card.data.base_model == "facebook/vit-mae-base"
    assert "masked-autoencoder" in card.data.tags
    assert {r.dataset_type for r in card.data.eval_results} == {"uoft-cs/cifar10"}


def test_local_starting_point_is_not_a_base_model(tmp_path):
    card = render_model_card(make_results(model_name_or_path=str(tmp_path)))
    assert card.data.base_model is None


def test_model_index_has_one_entry_per_subspace():
    results = make_results(probe_subspaces=["top:0.5", "last:3"])
    for spec in ("top:0.5", "last:3"):
        results[f"eval/subspace_probe/accuracy/{spec}"] = 0.4
        results[f"eval/subspace_probe/dims/{spec}"] = 3
        results[f"eval/subspace_probe/explained_variance/{spec}"] = 0.5
    configs = [r.metric_config for r in model_index_results(results)]
    assert configs.count("top:0.5") == 1 and configs.count("last:3") == 1 and "top:0.9" not in configs


def test_empty_subspace_is_left_out_of_model_index(tmp_path):
    results = make_results()
    results["eval/subspace_probe/accuracy/top:0.9"] = float("nan")  # degenerate embeddings, nothing measured
    results["eval/subspace_probe/dims/top:0.9"] = 0
    render_model_card(results).save(tmp_path / "README.md")
    configs = {r.metric_config for r in ModelCard.load(tmp_path / "README.md").data.eval_results}
    assert "top:0.9" not in configs and {"bottom:0.2", "all"} <= configs


def test_missing_template_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="template_path"):
        render_model_card(make_results(), template_path=tmp_path / "nope.md")


def test_template_is_a_file_of_the_repository():
    assert DEFAULT_TEMPLATE.is_file()
    assert DEFAULT_TEMPLATE.read_text().startswith("---\n{{ card_data }}\n---")


def test_results_are_not_mutated():
    results = make_results()
    before = copy.deepcopy(results)
    render_model_card(results)
    assert results == before


def test_card_states_the_knn_settings_the_run_used():
    """A card names the settings its numbers were measured with: a run with --knn_k 5 says k=5 (the card used to
    print a literal k=20 whatever the run used), in the text and in model-index."""
    results = make_results(knn_k=5, knn_temperature=0.2)
    results["eval/knn/accuracy"] = 0.7
    results["eval/knn/weighted_accuracy"] = 0.72
    text = str(render_model_card(results))
    assert "k=5, cosine, temperature 0.2" in text and "k=20" not in text
    names = [entry.metric_name for entry in model_index_results(results)]
    assert "kNN accuracy (k=5, cosine, temperature 0.2, majority vote)" in names


def test_card_states_the_augmentation_the_run_trained_with():
    """A card never says a run was not augmented when it was: RandomResizedCrop (MAE's augmentation, arXiv
    2402.11337 section 5) is named with its area range, as the CIFAR crop and the flip are."""
    text = str(render_model_card(make_results(random_resized_crop=0.2, random_flip=True)))
    assert "RandomResizedCrop (area 0.2-1.0 of the image), horizontal flip" in text
    text = str(
        render_model_card(make_results(random_resized_crop=None, random_flip=False, random_crop_padding=0))
    )
    assert "RandomResizedCrop" not in text
