"""End to end: the alignment command (scripts/alignment.py) on the embedded digits, offline, into a temporary directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hf_recperc.commands import alignment
from hf_recperc.corruption import parse_corruption


def test_alignment_script_on_digits(tmp_path, capsys):
    corruptions = ["none", "gaussian:0.5", "mask:0.5:1", "mask:0.75:2"]
    study = alignment.run(
        [
            "--corruptions",
            *corruptions,
            "--max_train_samples",
            "400",
            "--output_dir",
            str(tmp_path),
            "--disable_tqdm",
        ]
    )
    for name in ("alignment.png", "denoising_benefit.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 300
    saved = json.loads((tmp_path / "alignment.json").read_text())
    assert saved["dataset"] == "digits" and saved["dim"] == 64 and saved["image_shape"] == [1, 8, 8]
    assert saved["num_samples"] == 400 and saved == json.loads(json.dumps(study))
    assert list(saved["corruptions"]) == corruptions
    rank = saved["rank"]
    assert rank < 64  # digits' blank border pixels
    for result in saved["corruptions"].values():
        curve = np.array(result["alignment"])
        assert curve.shape == (64,) and np.all(np.diff(curve) >= -1e-9)
        np.testing.assert_allclose(curve[rank - 1 :], 100.0)
    audit = {spec: result["never_beneficial"] for spec, result in saved["corruptions"].items()}
    assert audit == {"none": True, "gaussian:0.5": True, "mask:0.5:1": False, "mask:0.75:2": False}
    np.testing.assert_allclose(saved["corruptions"]["gaussian:0.5"]["benefit"][:rank], 0.0, atol=1e-6)

    printed = capsys.readouterr().out
    assert "gaussian:0.5" in printed and "never beneficial" in printed and "can help" in printed
    assert str(tmp_path / "denoising_benefit.png") in printed


def test_default_grid_is_paper_grid():
    parsed = [parse_corruption(spec) for spec in alignment.DEFAULT_CORRUPTIONS]
    masks = [c for c in parsed if type(c).__name__ == "Masking"]
    assert {c.patch_size for c in masks} == {1, 2, 4}
    assert sorted({c.ratio for c in masks}) == pytest.approx(list(np.linspace(0, 0.99, 10)[1:]))
    assert len(set(map(str, parsed))) == len(parsed)


def test_alignment_script_rejects_bad_corruption_before_loading(tmp_path):
    with pytest.raises(ValueError, match="corruption 'blur:1'"):
        alignment.run(["--corruptions", "none", "blur:1", "--output_dir", str(tmp_path)])
    assert not (tmp_path / "alignment.json").exists()
