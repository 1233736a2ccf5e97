"""A saved model loads with ``trust_remote_code=True`` on a machine that has transformers but not hf_recperc.

The check runs in a fresh interpreter (isolated mode, cwd outside the repository) whose import system refuses
``hf_recperc``; everything it needs must come from the ``.py`` files saved next to the weights.
"""

import os
import subprocess
import sys
import textwrap

import torch

from hf_recperc import RecPercAEConfig, RecPercAEForPreTraining, RecPercMAEConfig, RecPercMAEForPreTraining

CHECK = textwrap.dedent(
    """
    import sys

    class HideHfRecperc:
        # First on the meta path, so the editable install's finder never sees the name.
        def find_spec(self, name, path=None, target=None):
            if name == "hf_recperc" or name.startswith("hf_recperc."):
                raise ImportError(f"{name} is hidden in this test")
            return None

    sys.meta_path.insert(0, HideHfRecperc())
    try:
        import hf_recperc  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_recperc is still importable")

    import torch
    from transformers import (
        AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining,
    )

    def check(model_dir, expected_file, family):
        expected = torch.load(expected_file)
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
        model = AutoModelForPreTraining.from_pretrained(model_dir, trust_remote_code=True).eval()
        for obj in (config, model):
            module = type(obj).__module__
            assert module.startswith("transformers_modules"), module
        with torch.no_grad():
            if family == "ae":
                out = model(pixel_values=expected["pixels"], labels=expected["labels"],
                            generator=torch.Generator().manual_seed(11))
            else:
                out = model(pixel_values=expected["pixels"], labels=expected["labels"], noise=expected["noise"])
            for field in ("loss", "reconstruction", "logits", "embeddings"):
                assert torch.equal(out[field], expected[field]), (family, field)
            encoder = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
            assert torch.equal(encoder(pixel_values=expected["pixels"]).embeddings, expected["features"])
        classifier = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True)
        assert type(classifier).__name__.endswith("ForImageClassification")
        processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        assert processor.size["height"] == config.image_size
        # Citizen 7: the processor converts an RGB image to the model's channels (1 for these digits models).
        rgb = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
        pixels = processor(rgb, return_tensors="pt").pixel_values
        assert pixels.shape == (1, config.num_channels, config.image_size, config.image_size), pixels.shape
        print("remote code OK", type(model).__name__)

    # argv: (model_dir, expected_file, family) triples
    for triple in zip(*[iter(sys.argv[1:])] * 3):
        check(*triple)
    """
)


def _save_ae(model_dir):
    config = RecPercAEConfig.preset("digits-mlp", corruption="mask:0.5:2", guidance=0.01)
    model = RecPercAEForPreTraining(config).eval()
    model.save_pretrained(model_dir)
    pixels = torch.randn(4, 1, 8, 8)
    labels = torch.tensor([0, 3, 9, 1])
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=labels, generator=torch.Generator().manual_seed(11))
        return dict(out, pixels=pixels, labels=labels, features=model.get_embeddings(pixels))


def _save_mae(model_dir):
    config = RecPercMAEConfig.preset("digits-vit-tiny", guidance=0.01)
    model = RecPercMAEForPreTraining(config).eval()
    model.save_pretrained(model_dir)
    pixels = torch.randn(2, 1, 8, 8)
    labels = torch.tensor([2, 7])
    noise = torch.rand(2, 16)
    with torch.no_grad():
        out = model(pixel_values=pixels, labels=labels, noise=noise)
        return dict(out, pixels=pixels, labels=labels, noise=noise, features=model.get_embeddings(pixels))


def test_trust_remote_code_without_the_package(tmp_path):
    # One interpreter checks both families: starting torch + transformers dominates the cost.
    args = []
    for family, save in (("ae", _save_ae), ("mae", _save_mae)):
        model_dir = tmp_path / family
        expected = save(model_dir)
        saved = set(os.listdir(model_dir))
        assert {
            "configuration_recperc.py",
            "modeling_recperc.py",
            *(("configuration_recperc_mae.py", "modeling_recperc_mae.py") if family == "mae" else ()),
            "corruption.py",
            "processing.py",
            "layers.py",
            "validation.py",
        } <= saved
        expected_file = tmp_path / f"{family}_expected.pt"
        torch.save({k: v for k, v in expected.items() if isinstance(v, torch.Tensor)}, expected_file)
        args += [str(model_dir), str(expected_file), family]

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),  # a fresh copy of the remote code, outside ~/.cache
        "OMP_NUM_THREADS": "2",
    }
    result = subprocess.run(
        [sys.executable, "-I", "-c", CHECK, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("remote code OK") == 2, result.stdout
