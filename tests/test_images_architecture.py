"""Architecture: hf_recperc/images/ is the one home of images (docs/design.md, "Data flow").

No image decoding, label encoding, augmentation or image cache key outside ``hf_recperc/images/``, and the trainer,
the report and the experiments import image code only from there. Read from the source (AST), so a new module
that decodes images on its own fails here before it ships.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_recperc"
IMAGES = PACKAGE / "images"
# The image processor saved with every model as remote code: it must run where hf_recperc is not installed, so it
# converts PIL images itself (the same ``convert`` the decode routine applies; docs/design.md, "Decoding").
OWN_CONVERSION = {PACKAGE / "processing.py"}
# Old homes of image code, folded into hf_recperc/images/.
OLD_MODULES = [
    "data.py",
    "pixel_store.py",
    "training/datapath.py",
    "training/streaming.py",
    "training/loaders.py",
]
CONSUMERS = ["training", "report", "experiments.py", "commands", "integrations"]

DECODING_CALLS = {
    "convert",
    "draft",
    "exif_transpose",
    "decode_example",
    "decode_jpeg",
    "decode_png",
    "read_image",
}
DECODING_MODULES = ("PIL", "torchvision.io")
AUGMENTATION_WORDS = ("crop", "flip", "augment")


def _modules(root: Path = PACKAGE):
    return sorted(path for path in root.rglob("*.py") if IMAGES not in path.parents)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _called_name(node: ast.Call) -> str | None:
    function = node.func
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)


def _imported_modules(tree: ast.Module, path: Path):
    """``(module, names)`` of every import, relative ones resolved against ``path``'s package."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield module, [alias.name for alias in node.names]


def test_the_old_homes_of_image_code_are_gone():
    """Architecture: data.py, pixel_store.py and the trainer's datapath/streaming/loaders modules were folded into
    hf_recperc/images/ (no second route left behind)."""
    assert [name for name in OLD_MODULES if (PACKAGE / name).exists()] == []
    assert {path.stem for path in IMAGES.glob("*.py")} >= {
        "sources", "decode", "store", "datasets", "augment", "pipeline",
    }  # fmt: skip


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_image_decoding_outside_images(path):
    """Architecture: no PIL / torchvision.io import and no decode call (``convert``, ``draft``, ``decode_jpeg``,
    ``datasets.Image.decode_example``, ...) outside hf_recperc/images/ (the remote-code image processor aside)."""
    tree = _tree(path)
    imports = [module for module, _ in _imported_modules(tree, path) if module.startswith(DECODING_MODULES)]
    calls = [
        f"{_called_name(node)}() at line {node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _called_name(node) in DECODING_CALLS
    ]
    if path in OWN_CONVERSION:
        calls = [call for call in calls if call.startswith("convert(")]
        assert len(calls) == 1, calls
        return
    assert imports == [] and calls == []


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_label_encoding_augmentation_or_image_cache_key_outside_images(path):
    """Architecture: no ``ClassLabel`` built, no ``{name: id}`` map over ``label_names``, no crop/flip/augment
    function and no key from a split's ``_fingerprint`` outside hf_recperc/images/."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and _called_name(node) in ("ClassLabel", "cast_column"):
            found.append(f"{_called_name(node)}() at line {node.lineno}")
        if isinstance(node, (ast.DictComp, ast.Call)) and "label_names" in ast.unparse(node):
            text = ast.unparse(node)
            if "enumerate(" in text or ".index(" in text:
                found.append(f"label ids from label_names at line {node.lineno}: {text[:80]}")
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and any(
            w in node.name.lower() for w in AUGMENTATION_WORDS
        ):
            found.append(f"augmentation {node.name!r} defined at line {node.lineno}")
        if isinstance(node, ast.Attribute) and node.attr == "_fingerprint":
            found.append(f"a split's _fingerprint read at line {node.lineno} (an image cache key)")
    assert found == []


@pytest.mark.parametrize("consumer", CONSUMERS)
def test_trainer_report_and_experiments_import_image_code_only_from_images(consumer):
    """Architecture: every name the trainer, the report, the experiments, the commands and the integrations import
    from image code comes from hf_recperc.images (no private copy, no old module)."""
    image_names = {
        node.name
        for path in IMAGES.glob("*.py")
        for node in _tree(path).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }
    root = PACKAGE / consumer
    wrong = []
    for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
        for module, names in _imported_modules(_tree(path), path):
            from_images = module == "hf_recperc.images" or module.startswith("hf_recperc.images.")
            leaked = [name for name in names if name in image_names]
            if leaked and module.startswith("hf_recperc") and not from_images:
                wrong.append(f"{path.relative_to(PACKAGE)}: {leaked} from {module}")
            if module.startswith(DECODING_MODULES):
                wrong.append(f"{path.relative_to(PACKAGE)}: imports {module}")
    assert wrong == []
    assert (
        any(
            module.startswith("hf_recperc.images")
            for path in ([root] if root.is_file() else root.rglob("*.py"))
            for module, _ in _imported_modules(_tree(path), path)
        )
        or consumer == "commands"
    )  # each consumer reads images through the package


def test_images_import_nothing_of_the_trainer_report_or_experiments():
    """Architecture: the data path no longer climbs training -> pixel_store -> data -> training: hf_recperc.images
    imports none of its consumers, so the flow runs one way (sources -> decode -> datasets -> augment -> pipeline)."""
    wrong = [
        f"{path.name}: {module}"
        for path in sorted(IMAGES.glob("*.py"))
        for module, _ in _imported_modules(_tree(path), path)
        if module.startswith(tuple(f"hf_recperc.{name.removesuffix('.py')}" for name in CONSUMERS))
    ]
    assert wrong == []
