"""The `evaluate` metric as a Hub Space, so that ``evaluate.load("namespace/name")`` finds it by name.

:func:`write_metric_space` writes the layout evaluate expects of a metric repository (the one its
``evaluate-cli create`` template produces), :func:`push_metric` uploads it; ``scripts/push_metric.py`` is the
command line. Layout of ``output_dir`` for ``repo_id="NS/NAME"``:

====================  ======================================================================================
``NAME.py``           the module (``metrics/subspace_probe_accuracy/subspace_probe_accuracy.py``); evaluate
                      loads ``<dir>/<basename(dir)>.py`` locally and ``NAME.py`` from the Space
``README.md``         the metric card, with the Space's YAML metadata (``sdk: gradio``, ``app_file``, tags)
``requirements.txt``  ``hf_recperc`` (which the module imports) and ``evaluate``: the Space installs them,
                      and evaluate's dependency check names ``hf_recperc`` where it is missing
``app.py``            evaluate's Gradio widget, ``launch_gradio_widget(evaluate.load("NS/NAME"))``
====================  ======================================================================================
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from . import SUBSPACE_PROBE_ACCURACY, __version__

__all__ = ["METRIC_SPACE_FILES", "metric_space_files", "push_metric", "write_metric_space"]

_MODULE_DIR = Path(SUBSPACE_PROBE_ACCURACY)
_MODULE_FILE = _MODULE_DIR / "subspace_probe_accuracy.py"
_CARD = _MODULE_DIR / "README.md"
# The local load line of the packaged card, replaced by the Hub id in the written copy.
_LOCAL_LOAD = "evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)"
# evaluate imports NAME.py as a Python module: the name must be an identifier (no '-' or '.').
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# launch_gradio_widget uses gradio 3's `gr.inputs` API (evaluate 0.4.x), removed in gradio 4.
_GRADIO_SDK_VERSION = "3.19.1"

METRIC_SPACE_FILES = ("{name}.py", "README.md", "requirements.txt", "app.py")


def _split_repo_id(repo_id: str) -> tuple[str, str]:
    namespace, sep, name = repo_id.partition("/")
    if not sep or not namespace or "/" in name or not _NAME.match(name):
        raise ValueError(
            f"repo_id: expected 'namespace/name' with a name made of letters, digits and '_' (evaluate imports "
            f"name.py as a module), got {repo_id!r}"
        )
    return namespace, name


def metric_space_files(repo_id: str) -> list[str]:
    """File names of the Space layout for ``repo_id`` (``NAME.py`` first)."""
    _, name = _split_repo_id(repo_id)
    return [pattern.format(name=name) for pattern in METRIC_SPACE_FILES]


def _card(repo_id: str) -> str:
    """The packaged metric card with the Space metadata evaluate's widget needs and the Hub load line."""
    text = _CARD.read_text()
    if not text.startswith("---\n"):
        raise ValueError(f"{_CARD}: the metric card must start with YAML metadata ('---')")
    end = text.index("\n---\n", 4)
    metadata, body = text[4:end], text[end + 5 :]
    space = (
        f"emoji: 📐\ncolorFrom: indigo\ncolorTo: green\nsdk: gradio\nsdk_version: {_GRADIO_SDK_VERSION}\n"
        "app_file: app.py\npinned: false\n"
    )
    return f"---\n{metadata}\n{space}---\n{body.replace(_LOCAL_LOAD, f'evaluate.load({repo_id!r})')}"


def write_metric_space(
    output_dir: str | Path, repo_id: str, hf_recperc_requirement: str | None = None
) -> Path:
    """Write the Space layout (see the module docstring); returns the folder that holds it.

    Args:
        output_dir: where to write; the layout goes to ``output_dir`` itself when its name is ``name``,
            else to ``output_dir/name`` (``evaluate.load(folder)`` needs ``folder/<basename>.py``). Created if
            needed; existing layout files are replaced, others kept.
        repo_id: ``"namespace/name"``; ``name`` names the module file.
        hf_recperc_requirement: the ``requirements.txt`` line installing this package, e.g. a
            ``git+https://...`` URL; default ``hf_recperc>=<installed version>``.
    """
    _, name = _split_repo_id(repo_id)
    output_dir = Path(output_dir)
    if output_dir.name != name:
        # evaluate.load(<dir>) imports <dir>/<basename(dir)>.py: the folder must carry the module's name.
        output_dir = output_dir / name
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_MODULE_FILE, output_dir / f"{name}.py")
    (output_dir / "README.md").write_text(_card(repo_id))
    requirement = hf_recperc_requirement or f"hf_recperc>={__version__}"
    (output_dir / "requirements.txt").write_text(f"{requirement}\nevaluate>=0.4.3,<0.5\n")
    (output_dir / "app.py").write_text(
        "import evaluate\n"
        "from evaluate.utils import launch_gradio_widget\n\n"
        f"module = evaluate.load({repo_id!r})\n"
        "launch_gradio_widget(module)\n"
    )
    return output_dir


def push_metric(
    repo_id: str,
    output_dir: str | Path,
    *,
    private: bool = False,
    commit_message: str = "Upload subspace_probe_accuracy metric",
    hf_recperc_requirement: str | None = None,
) -> str:
    """Write the layout into ``output_dir`` and upload exactly its files to the Space ``repo_id``; returns the URL."""
    from huggingface_hub import HfApi

    folder = write_metric_space(output_dir, repo_id, hf_recperc_requirement)
    api = HfApi()
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="space",
        allow_patterns=metric_space_files(repo_id),  # only the layout, whatever else the folder holds
        commit_message=commit_message,
    )
    return str(url)
