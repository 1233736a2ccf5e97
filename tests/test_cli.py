"""Argument parsing shared by the commands: flags, one YAML/JSON file, a file with flags on top, overrides."""

import json
from dataclasses import dataclass, field

import pytest

from hf_recperc.cli import ArgumentError, DataArguments, parse_arguments, parse_config_overrides


@dataclass
class Args:
    output_dir: str = field(metadata={"help": "required: no default"})
    epochs: int = 3
    lr: float = 1e-3
    subspaces: list[str] = field(default_factory=lambda: ["all"])
    augment: bool = False
    width: int | None = None


def parse(argv):
    return parse_arguments((Args, DataArguments), argv)


@pytest.fixture
def files(tmp_path):
    values = {"output_dir": "out", "epochs": 5, "subspaces": ["top:0.9", "bottom:0.2"], "augment": True}
    (tmp_path / "a.json").write_text(json.dumps(values))
    (tmp_path / "a.yaml").write_text(
        "output_dir: out\nepochs: 5\nsubspaces: [top:0.9, bottom:0.2]\naugment: true\n"
    )
    return tmp_path


def test_file_forms_equal_the_flags(files):
    flags = parse(
        ["--output_dir", "out", "--epochs", "5", "--subspaces", "top:0.9", "bottom:0.2", "--augment"]
    )
    assert flags[0] == Args("out", epochs=5, subspaces=["top:0.9", "bottom:0.2"], augment=True)
    for name in ("a.json", "a.yaml"):
        path = str(files / name)
        assert parse([path]) == flags  # the historical single-positional form
        assert parse(["-c", path]) == flags
        assert parse([f"--config={path}"]) == flags


def test_flags_override_the_file(files):
    args, data = parse(
        ["--epochs", "7", "-c", str(files / "a.yaml"), "--subspaces", "all", "--augment", "false"]
    )
    assert (args.epochs, args.subspaces, args.augment, args.output_dir) == (7, ["all"], False, "out")
    args, _ = parse([str(files / "a.json"), "--max_train_samples", "10", "--lr=-0.5"])
    assert args.epochs == 5 and args.lr == -0.5
    assert parse([str(files / "a.json"), "--max_train_samples", "10"])[1].max_train_samples == 10


def test_file_values_that_start_with_a_dash_and_nulls(tmp_path):
    (tmp_path / "b.yaml").write_text("output_dir: -weird\nlr: -1.0e-3\nwidth: null\ndataset_name: null\n")
    args, data = parse(["-c", str(tmp_path / "b.yaml")])
    assert (args.output_dir, args.lr, args.width, data.dataset_name) == ("-weird", -1e-3, None, None)


def test_config_overrides_as_a_mapping_in_the_file(tmp_path):
    @dataclass
    class ModelArgs:
        config_overrides: str | None = None

    (tmp_path / "m.yaml").write_text("config_overrides: {depths: [2, 2], act: gelu, tie: true}\n")
    (args,) = parse_arguments((ModelArgs,), ["-c", str(tmp_path / "m.yaml")])
    assert parse_config_overrides(args.config_overrides) == {"depths": [2, 2], "act": "gelu", "tie": True}
    (args,) = parse_arguments((ModelArgs,), ["-c", str(tmp_path / "m.yaml"), "--config_overrides", "x=1"])
    assert args.config_overrides == "x=1"  # the flag wins, as for every argument


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (None, ".yaml", "config: file '.*missing.yaml' not found"),
        ("epochs: [1, 2\n", ".yaml", "is not valid YAML"),
        ('{"epochs": 1,}', ".json", "is not valid JSON"),
        ("- 1\n- 2\n", ".yaml", "must map argument names to values, got a list"),
        ("output_dir: x\nepoch: 4\n", ".yaml", "unknown key 'epoch'; did you mean 'epochs'"),
        ("output_dir: x\nepochs: four\n", ".yaml", "argument --epochs: invalid int value: 'four'"),
        ("output_dir: x\nepochs: [1, 2]\n", ".yaml", "epochs: expected one value"),
        ("output_dir: x\nsubspaces: [[1]]\n", ".yaml", "subspaces: expected a list of plain values"),
        ("output_dir: x\nepochs: null\n", ".yaml", "epochs: null is not allowed"),
        ("epochs: 2\n", ".yaml", "required: --output_dir"),
    ],
)
def test_file_errors_are_one_line_and_name_the_argument(tmp_path, content, suffix, message):
    path = tmp_path / (f"missing{suffix}" if content is None else f"bad{suffix}")
    if content is not None:
        path.write_text(content)
    with pytest.raises(ArgumentError, match=message) as error:
        parse(["-c", str(path)])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output_dir", "x", "--epoch", "3"], "unknown argument '--epoch'; did you mean '--epochs'"),
        (["--output_dir", "x", "--zzz=1"], "unknown argument '--zzz'; see --help"),
        (["--output_dir", "x", "stray"], "unexpected value 'stray'"),
        (["--output_dir", "x", "--epochs", "1.5"], "argument --epochs: invalid int value"),
        (["--output_dir", "x", "-c"], "argument -c: expected a .json or .yaml file name"),
        (["--config", "args.txt"], "config: expected a .json, .yaml or .yml file"),
    ],
)
def test_flag_errors_name_the_argument(argv, message):
    with pytest.raises(ArgumentError, match=message):
        parse(argv)


def test_argument_error_is_a_value_error():
    assert issubclass(ArgumentError, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize(
    "text, expected",
    [
        (None, {}),
        ("", {}),
        ("latent_dim=64", {"latent_dim": 64}),
        ("depths=[2,2],latent_dim=64", {"depths": [2, 2], "latent_dim": 64}),
        ("a=[[1,2],[3]], b = true ,c=gelu", {"a": [[1, 2], [3]], "b": True, "c": "gelu"}),
        ('m={"x": [1, 2]},s="p,q",n=null,f=1e-3', {"m": {"x": [1, 2]}, "s": "p,q", "n": None, "f": 1e-3}),
    ],
)
def test_parse_config_overrides(text, expected):
    assert parse_config_overrides(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [("latent_dim", "expected 'key=value"), ("=3", "expected 'key=value"), ("a=[1,2", "unclosed"),
     ("a=1]", "unbalanced ']'"), ("a=[1,2}", "unbalanced '}'"), ('a="x', "unclosed")],
)  # fmt: skip
def test_parse_config_overrides_errors(text, message):
    with pytest.raises(ArgumentError, match=f"config_overrides: {message}"):
        parse_config_overrides(text)


def test_yaml_alias_bomb_in_a_list_argument_is_refused_at_once(tmp_path):
    """Trust 5: a YAML alias bomb (each item repeating the previous one nine times: 9**9 = 387 million values) in a
    list argument is refused with one line naming the file, in well under a second, instead of exhausting memory
    while the values are checked or quoted in an error message; a few ordinary aliases still work."""
    import time

    lines = ["subspaces:", "  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  - &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("output_dir: out\n" + "\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ArgumentError) as raised:
        parse(["-c", str(bomb)])
    assert time.perf_counter() - start < 5
    message = str(raised.value)
    assert message.startswith(f"config: {str(bomb)!r}: its aliases (*name) expand to more than")
    assert "\n" not in message and len(message) < 300

    friendly = tmp_path / "aliases.yaml"
    friendly.write_text("output_dir: &name run1\nsubspaces: [*name, all]\n")
    assert parse(["-c", str(friendly)])[0].subspaces == ["run1", "all"]


def test_a_huge_nested_value_is_quoted_short(tmp_path):
    """Trust 5: an error about a nested value quotes a shortened repr, never the whole value (one line)."""
    path = tmp_path / "nested.yaml"
    path.write_text("output_dir: out\nsubspaces: [[" + ", ".join(["x" * 50] * 5000) + "]]\n")
    with pytest.raises(ArgumentError, match="expected a list of plain values") as raised:
        parse(["-c", str(path)])
    assert len(str(raised.value)) - len(str(path)) < 300
