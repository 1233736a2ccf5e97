"""Every code block of README.md and docs/*.md runs, so what a newcomer copies works.

* ```python blocks run as written, in order, in one namespace per page and a fresh working folder per page (a block
  may use what an earlier block of its page made, e.g. a model folder).
* ```bash / ```sh / ```console blocks are read line by line (continuation lines joined, comments dropped, a
  ``for ...; do ...; done`` loop unrolled, a ``cat > FILE <<'EOF'`` here-document written) and each command runs
  in-process through the ``main(argv)`` of the script it names (``scripts/X.py``, ``recperc-X``, under ``python``
  or a plain ``accelerate launch``), with the budget flags of :data:`TINY` appended (appended flags win), in the
  page's working folder. The launcher itself is covered by the slow tests of ``tests/test_training.py``.
* Placeholders are filled (:data:`PLACEHOLDERS`); ``path/to/cifar10`` is the local CIFAR-10 copy of the test
  machines: pages that use it (:data:`CIFAR10_PAGES`) run in the slow tier and skip when the copy is absent.
* The Hub is never called: ``load_dataset("uoft-cs/cifar10")`` returns a tiny stand-in with CIFAR-10's columns, and
  uploads go to a recording fake (``tests/test_push.py::intercept_hub``) whose calls are checked.
* Not run, each for a listed reason: the install lines (:data:`INSTALL_LINES`) and excerpts (:data:`EXCERPTS`,
  compiled only). Any other language (```text for output samples, ```bibtex, ```yaml) is not code to run; a fence
  without a language is an error, so nothing escapes by omission.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
# Every block of these pages trains or measures on CIFAR-10 (minutes): the slow tier.
CIFAR10_PAGES = {"docs/results.md"}
SHELL = {"bash", "sh", "console"}
RUN = {"python", *SHELL}
PLACEHOLDERS = {"YOUR_NAME": "someone", "COMMIT": "0123456789abcdef0123456789abcdef01234567"}

# Budget flags appended to a command (they win over the same flags written before them).
TINY = {
    "pretrain": [
        "--max_steps", "2", "--max_train_samples", "128", "--max_eval_samples", "32",
        "--per_device_train_batch_size", "32", "--eval_steps", "1", "--report_to", "none",
    ],
    "report": ["--max_train_samples", "128", "--max_eval_samples", "32"],
    "alignment": ["--max_train_samples", "200", "--corruptions", "none", "gaussian:0.1", "mask:0.75:4"],
    "pca_figure": ["--max_train_samples", "256"],
    "pca_classification": [
        "--max_steps", "2", "--train_subset", "64", "--max_train_samples", "256", "--max_eval_samples", "64",
        "--subspaces", "top:0.9", "bottom:0.2", "--device", "cpu",
    ],
}  # fmt: skip

# Lines that install the project: not run by the tests (they are what runs the tests), checked to be one of these.
INSTALL_LINES = {
    "python3 -m venv .venv && .venv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu",
    ".venv/bin/pip install -e '.[dev]' && .venv/bin/pytest",
}

# Excerpts that show part of a file the reader writes (its names are the reader's own): compiled, not run.
EXCERPTS = [  # (page, how the block starts, why it cannot run)
    (
        "docs/design.md",
        "SPEC = register_family(",
        "a family's registration; its classes are the reader's own",
    ),
]


@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """Fenced blocks of a Markdown page, with the line of their opening fence."""
    text = path.read_text()
    page = path.relative_to(REPO).as_posix()
    blocks = []
    for match in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", text, re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(page, line, match.group(1).lower(), match.group(2)))
    return blocks


# --------------------------------------------------------------------------------------- shell lines -> commands


def shell_commands(code: str) -> list[list[str] | tuple[str, str]]:
    """A shell block as commands: argv lists, or ``("write", path, text)`` for a here-document."""
    lines = code.replace("\\\n", " ").splitlines()
    commands, index = [], 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        heredoc = re.fullmatch(r"cat > (\S+) <<'?(\w+)'?", line)
        if heredoc:
            end = lines.index(heredoc.group(2), index)
            commands.append(("write", heredoc.group(1), "\n".join(lines[index:end]) + "\n"))
            index = end + 1
            continue
        loop = re.fullmatch(r"for (\w+) in ([^;]+); do", line)
        if loop:
            end = next(i for i in range(index, len(lines)) if lines[i].strip() == "done")
            for value in loop.group(2).split():
                for body in lines[index:end]:
                    commands += shell_commands(body.replace(f"${loop.group(1)}", value))
            index = end + 1
            continue
        argv = shlex.split(line, comments=True)
        while argv:  # `a && b`: a, then b
            end = argv.index("&&") if "&&" in argv else len(argv)
            commands.append(argv[:end])
            argv = argv[end + 1 :]
    return commands


def _console_scripts() -> dict[str, str]:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target.split(":")[0] for name, target in scripts.items()}


def command_module(argv: list[str]) -> tuple[str, list[str]]:
    """``[env=..] [.venv/bin/](accelerate launch | python) scripts/X.py args`` or ``recperc-X args`` -> (module, args)."""
    while argv and re.fullmatch(r"\w+=\S*", argv[0]):
        argv = argv[1:]
    program, *rest = argv
    program = program.removeprefix(".venv/bin/")
    if program == "accelerate":
        assert rest[0] == "launch" and rest[1].endswith(".py"), f"launcher flags are not run here: {argv}"
        script, *args = rest[1:]
    elif program in ("python", "python3"):
        script, *args = rest
    elif program in _console_scripts():
        return _console_scripts()[program], rest
    else:
        raise AssertionError(f"not a command of this project: {shlex.join(argv)}")
    source = (REPO / script).read_text()
    module = re.search(r"^from (hf_recperc\.commands\.\w+) import main\b", source, re.M)
    assert module, f"{script} does not call a hf_recperc.commands main"
    return module.group(1), args


def tiny_argv(module: str, args: list[str]) -> list[str]:
    if "--help" in args:
        return args
    return [*args, *TINY.get(module.rsplit(".", 1)[-1], [])]


def fill(text: str, cifar10: Path | None) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    return text.replace("path/to/cifar10", str(cifar10)) if cifar10 else text


# ------------------------------------------------------------------------------------------------- stand-ins


def tiny_cifar10():
    """20 train / 10 test random 32x32 RGB images with CIFAR-10's columns and class names."""
    import datasets
    import numpy as np
    from PIL import Image

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    rng = np.random.default_rng(0)

    def split(rows):
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(rows)]
        return datasets.Dataset.from_dict({"img": images, "label": [i % 10 for i in range(rows)]}, features)

    return datasets.DatasetDict({"train": split(20), "test": split(10)})


@pytest.fixture
def no_hub(monkeypatch):
    """Hub stand-ins: CIFAR-10's id loads a tiny copy; uploads are recorded (returned list)."""
    import datasets

    sys.path.insert(0, str(REPO / "tests"))
    from test_push import intercept_hub

    real_load_dataset = datasets.load_dataset

    def load_dataset(path, *args, **kwargs):
        return tiny_cifar10() if path == "uoft-cs/cifar10" else real_load_dataset(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return intercept_hub(monkeypatch)


# ---------------------------------------------------------------------------------------------------- running


def run_page(page: Path, workdir: Path, monkeypatch, cifar10: Path | None = None) -> list[str]:
    """Run every block of ``page`` in order in ``workdir``; returns the commands run (module and argv)."""
    monkeypatch.chdir(workdir)
    namespace, ran = {"__name__": "docs"}, []
    for block in read_blocks(page):
        if block.language == "python":
            if _excerpt(block):
                compile(block.code, block.name, "exec")
                continue
            exec(compile(fill(block.code, cifar10), block.name, "exec"), namespace)
            ran.append(f"python block {block.name}")
        elif block.language in SHELL:
            ran += _run_shell(block, cifar10, monkeypatch)
    return ran


def _excerpt(block: Block) -> bool:
    return any(page == block.page and block.code.startswith(start) for page, start, _ in EXCERPTS)


def _run_shell(block: Block, cifar10: Path | None, monkeypatch) -> list[str]:
    ran = []
    for command in shell_commands(fill(block.code, cifar10)):
        if command[0] == "write":
            Path(command[1]).write_text(command[2])
            continue
        if is_install(command):
            continue
        for assignment in command:
            if not re.fullmatch(r"\w+=\S*", assignment):
                break
            monkeypatch.setenv(*assignment.split("=", 1))
        module, args = command_module(command)
        argv = tiny_argv(module, args)
        with contextlib.redirect_stdout(sys.stderr):
            try:
                code = importlib.import_module(module).main(argv)
            except SystemExit as stop:
                code = stop.code
        assert code in (0, None), f"{block.name}: `{shlex.join(command)}` exited with {code} (argv {argv})"
        ran.append(f"{module} {shlex.join(argv)}")
    return ran


def is_install(command: list[str]) -> bool:
    """One command of a listed install line (``a && b`` lines are split into their commands)."""
    return any(command == part for line in INSTALL_LINES for part in shell_commands(line))


# ------------------------------------------------------------------------------------------------------ tests


def test_every_block_has_a_language_and_every_exception_exists():
    """A fence without a language would escape the tests; each listed exception names a block that is there."""
    blocks = [block for page in PAGES for block in read_blocks(page)]
    assert not [block.name for block in blocks if not block.language]
    shell = {line for block in blocks if block.language in SHELL for line in block.code.splitlines()}
    for line in INSTALL_LINES:
        assert line in shell, line
        assert re.match(r"(python3 -m venv \.venv|\.venv/bin/pip install)", line), line  # an install line
    for page, start, _ in EXCERPTS:
        assert any(b.page == page and b.code.startswith(start) for b in blocks), (page, start)


def test_every_shell_command_names_a_command_of_this_project():
    """Every shell line of every page (the CIFAR-10 pages too, which run only in the slow tier) maps to a
    ``main`` of ``hf_recperc.commands`` or is a listed install line, so a renamed script breaks this test."""
    for page in PAGES:
        for block in read_blocks(page):
            if block.language not in SHELL:
                continue
            for command in shell_commands(fill(block.code, None)):
                if command[0] == "write" or is_install(command):
                    continue
                module, _ = command_module(command)
                assert callable(importlib.import_module(module).main), (block.name, module)


FAST_PAGES = [page for page in PAGES if page.relative_to(REPO).as_posix() not in CIFAR10_PAGES]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("page", FAST_PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_page_blocks_run(page, tmp_path, monkeypatch, no_hub):
    """README and docs: each page's code runs as written (shell commands with tiny budgets)."""
    ran = run_page(page, tmp_path, monkeypatch)
    if page == REPO / "README.md":
        from hf_recperc.images import load_image_dataset

        # The Data section's layout is one we read: train.parquet / test.parquet with CIFAR-10's columns.
        data = load_image_dataset(str(tmp_path / "path" / "to" / "cifar10"))
        assert (data.image_column, data.label_column) == ("img", "label")
        assert data.split["validation_split"] == "test"
        # The Publish section reached the (fake) Hub with the model and the metric Space.
        assert {call["repo_id"] for call in no_hub if call["method"] == "upload_folder"} == {
            "someone/recperc-digits-ae",
            "someone/subspace_probe_accuracy",
        }
        assert (tmp_path / "outputs" / "recperc" / "model.safetensors").is_file()
    print("\n".join(ran))


@pytest.mark.slow
@pytest.mark.cifar10
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("page", sorted(CIFAR10_PAGES))
def test_cifar10_page_blocks_run(page, tmp_path, monkeypatch, no_hub):
    """The CIFAR-10 results page: every command, on the local copy, with tiny budgets."""
    if not (CIFAR10 / "train.parquet").is_file():
        pytest.skip(f"a local CIFAR-10 copy (train.parquet, test.parquet) is not at {CIFAR10}")
    ran = run_page(REPO / page, tmp_path, monkeypatch, cifar10=CIFAR10)
    assert any(str(CIFAR10) in command for command in ran)
    print("\n".join(ran))
