"""The `evaluate` metric as a Hub Space, so that ``evaluate.load("namespace/name")`` finds it by name.

:func:`write_metric_space` writes the layout evaluate expects of a metric repository (the one its
``evaluate-cli create`` template produces), :func:`push_metric` uploads it; ``scripts/push_metric.py`` is the
command line. Layout of ``output_dir`` for ``repo_id="NS/NAME"``:

====================  ======================================================================================
``NAME.py``           the module (``metrics/subspace_probe_accuracy/subspace_probe_accuracy.py``); evaluate
                      loads ``<dir>/<basename(dir)>.py`` locally and ``NAME.py`` from the Space
``README.md``         the metric card, with the Space's YAML metadata (``sdk: gradio``, ``app_file``, tags)
``requirements.txt``  ``hf_recperc`` (which the module imports) from a pinned source, and ``evaluate``: the
                      Space installs them, and evaluate's dependency check names ``hf_recperc`` where it is
                      missing
``app.py``            evaluate's Gradio widget, ``launch_gradio_widget(evaluate.load("NS/NAME"))``
====================  ======================================================================================

``hf_recperc`` is not on the package index, so a bare ``hf_recperc>=...`` line would install whatever anyone
registers under that name, in every Space built from it: the requirement is a pinned source
(:func:`space_requirement`), given by the user or read from how this copy was installed (a git commit), and never
written otherwise. The folder is written through the guarded writer (:mod:`hf_recperc.publish`): a ``README.md``,
``app.py``, ... of the user's in it is never overwritten.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import metadata
from pathlib import Path

from . import SUBSPACE_PROBE_ACCURACY
from .publish import OutputDirectory, Outputs, copy_file, write_text

__all__ = [
    "METRIC_SPACE_FILES",
    "metric_space_files",
    "push_metric",
    "space_requirement",
    "write_metric_space",
]

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

# A pinned source of hf_recperc: a git commit (full hash) over https, or an https archive with its sha256.
_PINNED_GIT = re.compile(r"git\+https://[^\s@#]+@[0-9a-f]{40}(#\S*)?")
_PINNED_ARCHIVE = re.compile(r"https://\S+\.(whl|tar\.gz|zip)#sha256=[0-9a-f]{64}")
_EXPECTED_REQUIREMENT = (
    "a pinned source, 'hf_recperc @ git+https://HOST/OWNER/REPO@<40-hex commit>' or "
    "'hf_recperc @ https://.../hf_recperc-X.whl#sha256=<64-hex hash>'"
)


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


def space_requirement(hf_recperc_requirement: str | None = None) -> str:
    """The ``requirements.txt`` line that installs ``hf_recperc`` in the Space: a pinned, explicit source.

    Args:
        hf_recperc_requirement: ``hf_recperc @ git+https://...@<commit>`` or ``hf_recperc @ https://...whl#sha256=...``
            (the ``hf_recperc @`` may be left out); default: the git commit this copy was installed from
            (``pip install git+https://...``, recorded by pip in ``direct_url.json``).

    Raises:
        ValueError: the requirement is not pinned (a bare name, a branch, a tag, no hash), or none is given and
            this copy was not installed from a git commit (an editable checkout, a local wheel).
    """
    requirement = hf_recperc_requirement if hf_recperc_requirement is not None else _installed_source()
    if requirement is None:
        raise ValueError(
            "hf_recperc_requirement: this copy of hf_recperc was not installed from a git commit, and the name "
            "hf_recperc is not registered on the package index (whoever registers it would run code in the Space); "
            f"pass --hf_recperc_requirement with {_EXPECTED_REQUIREMENT}"
        )
    source = re.sub(r"^hf_recperc\s*@\s*", "", requirement.strip())
    if not (_PINNED_GIT.fullmatch(source) or _PINNED_ARCHIVE.fullmatch(source)):
        raise ValueError(f"hf_recperc_requirement: expected {_EXPECTED_REQUIREMENT}, got {requirement!r}")
    return f"hf_recperc @ {source}"


def _installed_source() -> str | None:
    """``git+URL@commit`` when pip installed this copy from a git commit over https (PEP 610), else ``None``."""
    try:
        record = json.loads(metadata.distribution("hf_recperc").read_text("direct_url.json") or "null")
    except (metadata.PackageNotFoundError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    vcs, url = record.get("vcs_info") or {}, str(record.get("url", ""))
    if vcs.get("vcs") != "git" or not url.startswith("https://") or not vcs.get("commit_id"):
        return None
    return f"git+{url}@{vcs['commit_id']}"


def _metric_outputs(repo_id: str) -> Outputs:
    """The layout's files, declared to the guarded writer (the user's files of these names are never replaced)."""
    return Outputs(command="push_metric", names=frozenset(metric_space_files(repo_id)))


def write_metric_space(
    output_dir: str | Path, repo_id: str, hf_recperc_requirement: str | None = None
) -> Path:
    """Write the Space layout (see the module docstring); returns the folder that holds it.

    Args:
        output_dir: where to write; the layout goes to ``output_dir`` itself when its name is ``name``,
            else to ``output_dir/name`` (``evaluate.load(folder)`` needs ``folder/<basename>.py``). Created if
            needed; the layout files an earlier call wrote are replaced, others kept; a file of the user's under a
            layout name is an error (nothing written).
        repo_id: ``"namespace/name"``; ``name`` names the module file.
        hf_recperc_requirement: the ``requirements.txt`` line installing this package: see
            :func:`space_requirement`.
    """
    _, name = _split_repo_id(repo_id)
    requirement = space_requirement(hf_recperc_requirement)
    output_dir = Path(output_dir)
    if output_dir.name != name:
        # evaluate.load(<dir>) imports <dir>/<basename(dir)>.py: the folder must carry the module's name.
        output_dir = output_dir / name
    output = OutputDirectory(output_dir, _metric_outputs(repo_id))
    output.check()
    app = (
        "import evaluate\n"
        "from evaluate.utils import launch_gradio_widget\n\n"
        f"module = evaluate.load({repo_id!r})\n"
        "launch_gradio_widget(module)\n"
    )
    return output.write(
        {
            f"{name}.py": functools.partial(copy_file, _MODULE_FILE),
            "README.md": functools.partial(write_text, text=_card(repo_id)),
            "requirements.txt": functools.partial(write_text, text=f"{requirement}\nevaluate>=0.4.3,<0.5\n"),
            "app.py": functools.partial(write_text, text=app),
        }
    )


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
