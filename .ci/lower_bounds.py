"""Print pip constraints pinning each dependency of pyproject.toml to its lower bound (``name==X`` for ``>=X``).

Used by ``.ci/run``'s lower-bounds step, so that the bounds we publish are the versions we test. Packages named on
the command line are left free (``--keep torch torchvision``): pip then installs the newest allowed version.
"""

import argparse
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def lower_bounds(extras: list[str], keep: set[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins: dict[str, str] = {}  # name -> the highest lower bound any requirement of it states
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*)", requirement)
        name, specifiers = match.group(1), match.group(2)
        lower = re.search(r">=\s*([0-9][^,;\s]*)", specifiers)
        if lower is None:
            raise SystemExit(f"error: {requirement!r} has no lower bound (>=) in {PYPROJECT}")
        key = name.lower().replace("_", "-")
        if key not in keep and _version(lower.group(1)) > _version(pins.get(key, "0")):
            pins[key] = lower.group(1)
    return [f"{name}=={version}" for name, version in pins.items()]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--extras", nargs="*", default=[], help="optional-dependency groups to include")
    parser.add_argument("--keep", nargs="*", default=[], help="packages left at their newest allowed version")
    args = parser.parse_args()
    keep = {name.lower().replace("_", "-") for name in args.keep}
    print("\n".join(lower_bounds(args.extras, keep)))
