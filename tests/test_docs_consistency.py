"""The README and docs/porting.md say what the code has: the variant families, the kernel options, the
pictures they show, the commands they quote, and the synthetic tensors the command line documents."""

from __future__ import annotations

import inspect
import pathlib
import re
import shlex

import pytest

from attnc.cli import build_parser
from attnc.cli import stand_ins as stand_ins_module
from attnc.runtime.kernel_options import BACKENDS, known_options
from attnc.variants import FAMILIES

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PORTING = (ROOT / "docs" / "porting.md").read_text()
NUMBERS = {"twenty": 20, "twenty-four": 24}


def families_paragraph() -> str:
    found = re.search(r"`attnc\.variants` has (\S+) families.*?`V\.FAMILIES` names them all", README, re.DOTALL)
    assert found, "README: no sentence '`attnc.variants` has N families ... `V.FAMILIES` names them all'"
    return found[0]


def test_readme_counts_the_families_of_the_registry() -> None:
    count = re.match(r"`attnc\.variants` has (\S+) families", families_paragraph())[1]
    assert int(NUMBERS.get(count, count)) == len(FAMILIES)


def test_readme_names_every_family_by_its_registry_name() -> None:
    named = set(re.findall(r"`(\w+)`", families_paragraph())) - {"attnc", "FAMILIES"}
    assert named == set(FAMILIES), (f"missing from the README: {sorted(set(FAMILIES) - named)}; "
                                    f"not families: {sorted(named - set(FAMILIES))}")


def test_readme_pictures_exist() -> None:
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures, "the README shows no picture"
    for picture in pictures:
        path = ROOT / picture
        assert path.is_file(), picture
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), picture


def test_every_committed_picture_is_shown() -> None:
    docs = README + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for picture in (ROOT / "docs" / "images").glob("*.png"):
        assert picture.name in docs, f"{picture.relative_to(ROOT)} is shown nowhere"


def quoted_commands() -> list[str]:
    spans = re.findall(r"`(attnc [^`]+)`", README)
    return [span for span in spans if "|" not in span and "..." not in span]  # `attnc cache ls|clear|info`


@pytest.mark.parametrize("command", sorted(set(quoted_commands())))
def test_readme_commands_parse(command: str) -> None:
    """Every `attnc ...` the README quotes names a subcommand, and a full command line parses (nothing is run)."""
    words = shlex.split(command)[1:]
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert words[0] in subcommands or words == ["--help"], command
    if len(words) > 1:
        assert callable(parser.parse_args(words).run)


def test_readme_quotes_commands_at_all() -> None:
    assert {"show", "viz", "check", "tune", "inspect"} <= {c.split()[1] for c in quoted_commands()}


@pytest.mark.parametrize("key", known_options())
def test_porting_guide_lists_every_kernel_option(key: str) -> None:
    assert f"`{key}`" in PORTING, f"docs/porting.md does not mention kernel option {key}"


def test_porting_guide_lists_the_backend_values() -> None:
    for value in BACKENDS:
        assert f'`"{value}"`' in PORTING, value


def tensor_families() -> list[tuple[str, str]]:
    """(family, parameter) for every required tensor-only parameter of the registry's factories."""
    found = []
    for name, factory in FAMILIES.items():
        for parameter in inspect.signature(factory).parameters.values():
            if parameter.default is parameter.empty and parameter.annotation in ("torch.Tensor", "Tensor"):
                found.append((name, parameter.name))
    return found


def test_every_tensor_family_has_a_documented_stand_in() -> None:
    needed = tensor_families()
    assert needed and set(needed) == set(stand_ins_module.STAND_INS)
    doc = stand_ins_module.__doc__ or ""
    for family, parameter in needed:
        assert re.search(rf"^    {family}\b.*\b{parameter}\b", doc, re.MULTILINE), (family, parameter)
