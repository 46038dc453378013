"""scripts/setup.sh: which Python it installs into (PEP 668 and .venv), and how the scripts use it.

The interpreter choice is tested with stub interpreters: small Python scripts that run setup.sh's own probe
(with the real interpreter, but seeing an EXTERNALLY-MANAGED file or a virtual environment as asked) and fake
`-m venv`, so the real logic runs in a throwaway copy of the scripts and nothing is installed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

STUB = '''#!{python}
"""A Python for setup.sh's tests: {mode}."""
import os, shutil, sys, sysconfig

MODE = {mode!r}
if sys.argv[1:2] == ["-"]:  # setup.sh's probe, on stdin: run it for real, seeing what MODE says
    # a stdlib directory of its own, holding EXTERNALLY-MANAGED or not as MODE says
    stdlib, real = {stdlib!r}, sysconfig.get_path
    sysconfig.get_path = lambda name, *args, **kwargs: stdlib if name == "stdlib" else real(name, *args, **kwargs)
    # in a virtual environment or not as MODE says, whatever the interpreter running the tests is in
    sys.prefix = "/a/virtual/environment" if MODE == "in-venv" else sys.base_prefix
    sys.argv = sys.argv[1:]
    exec(compile(sys.stdin.read(), "<probe>", "exec"), {{"__name__": "__main__"}})
elif sys.argv[1:3] == ["-m", "venv"]:
    target = sys.argv[3]
    os.makedirs(os.path.join(target, "bin"))
    if MODE == "no-venv-module":
        sys.exit("Error: ensurepip is not available (the virtual environment was not created successfully)")
    with open(__file__) as source:
        text = source.read().replace("MODE = " + repr(MODE), "MODE = 'in-venv'")
    with open(os.path.join(target, "bin", "python"), "w") as made:
        made.write(text)
    os.chmod(os.path.join(target, "bin", "python"), 0o755)
else:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
'''


@pytest.fixture
def checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of scripts/ in a directory of its own: a .venv made there touches nothing else."""
    shutil.copytree(SCRIPTS, tmp_path / "checkout" / "scripts")
    return tmp_path / "checkout"


def stub(tmp_path: pathlib.Path, mode: str) -> pathlib.Path:
    stdlib = tmp_path / f"stdlib-{mode}"
    stdlib.mkdir()
    if mode in ("managed", "no-venv-module"):
        (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use a virtual environment\n")
    path = tmp_path / f"python-{mode}"
    path.write_text(STUB.format(python=sys.executable, mode=mode, stdlib=str(stdlib)))
    path.chmod(0o755)
    return path


def source_and_run(checkout: pathlib.Path, command: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON")} | env
    return subprocess.run(["bash", "-c", f"source scripts/setup.sh && {command}"], cwd=checkout, env=environment,
                          capture_output=True, text=True, timeout=120)


def choose(checkout: pathlib.Path, python: pathlib.Path | str, **env: str) -> subprocess.CompletedProcess[str]:
    return source_and_run(checkout, "setup_choose_python", PYTHON=str(python), **env)


def test_a_python_that_allows_installs_is_used_as_it_is(checkout: pathlib.Path, tmp_path: pathlib.Path) -> None:
    python = stub(tmp_path, "free")
    done = choose(checkout, python)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(python) and done.stderr == ""
    assert not (checkout / ".venv").exists()


def test_an_active_virtual_environment_is_used_as_it_is(checkout: pathlib.Path, tmp_path: pathlib.Path) -> None:
    python = stub(tmp_path, "in-venv")
    assert choose(checkout, python).stdout.strip() == str(python)
    managed = stub(tmp_path, "managed")  # VIRTUAL_ENV set: the user chose; nothing is created
    assert choose(checkout, managed, VIRTUAL_ENV=str(tmp_path)).stdout.strip() == str(managed)
    assert not (checkout / ".venv").exists()


def test_an_externally_managed_python_gets_a_venv_in_the_checkout(checkout: pathlib.Path,
                                                                   tmp_path: pathlib.Path) -> None:
    python = stub(tmp_path, "managed")
    venv_python = checkout / ".venv" / "bin" / "python"
    first = choose(checkout, python)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(venv_python) and venv_python.exists()
    assert "externally managed (PEP 668): creating a virtual environment in" in first.stderr
    assert "source .venv/bin/activate" in first.stderr
    again = choose(checkout, python)  # made once, then reused
    assert again.stdout.strip() == str(venv_python)
    assert "using the virtual environment" in again.stderr and "creating" not in again.stderr
    # what the scripts run next with that interpreter sees a virtual environment: no second venv
    assert choose(checkout, venv_python).stdout.strip() == str(venv_python)


def test_a_python_without_venv_says_what_to_install(checkout: pathlib.Path, tmp_path: pathlib.Path) -> None:
    done = choose(checkout, stub(tmp_path, "no-venv-module"))
    assert done.returncode == 1
    assert "cannot create a virtual environment" in done.stderr and "apt install python3-venv" in done.stderr
    assert "ensurepip is not available" in done.stderr  # venv's own reason comes along
    assert not (checkout / ".venv").exists()  # nothing half made is left to be mistaken for a venv


def test_no_python_at_all(checkout: pathlib.Path) -> None:
    done = source_and_run(checkout, "setup_choose_python", PYTHON=str(checkout / "no-such-python"))
    assert done.returncode == 1 and "does not run" in done.stderr


def test_the_probe_on_real_interpreters(checkout: pathlib.Path, tmp_path: pathlib.Path) -> None:
    managed = (pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").is_file()
    in_venv = sys.prefix != sys.base_prefix
    expected = "venv" if in_venv else "managed" if managed else "free"
    assert source_and_run(checkout, f"setup_python_kind {sys.executable}").stdout.strip() == expected
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    assert source_and_run(checkout, f"setup_python_kind {venv / 'bin' / 'python'}").stdout.strip() == "venv"


SYSTEM_PYTHON = pathlib.Path("/usr/bin/python3")
FACTS = ("import os, sys, sysconfig; print(sys.prefix != sys.base_prefix, "
         "os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))")


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no system Python in /usr/bin")
def test_the_probe_on_the_system_python(checkout: pathlib.Path) -> None:
    """On Debian and Ubuntu this is an externally managed Python: the case the venv is for."""
    in_venv, managed = subprocess.run([SYSTEM_PYTHON, "-c", FACTS], capture_output=True, text=True, check=True,
                                      timeout=60).stdout.split()
    expected = "venv" if in_venv == "True" else "managed" if managed == "True" else "free"
    assert source_and_run(checkout, f"setup_python_kind {SYSTEM_PYTHON}").stdout.strip() == expected


@pytest.mark.parametrize(("extras", "modules"), [
    ("", "torch triton"), ("test", "torch triton pytest hypothesis xdist ruff"),
    ("test,hf", "torch triton pytest hypothesis xdist ruff transformers"),
])
def test_extras_name_the_modules_that_must_import(checkout: pathlib.Path, extras: str, modules: str) -> None:
    assert source_and_run(checkout, f"setup_modules '{extras}'").stdout.strip() == modules


def test_an_unknown_extra_is_refused(checkout: pathlib.Path) -> None:
    done = source_and_run(checkout, "setup_modules tset")
    assert done.returncode == 1 and "unknown extra 'tset'" in done.stderr


def test_sourcing_setup_runs_nothing(checkout: pathlib.Path, tmp_path: pathlib.Path) -> None:
    done = source_and_run(checkout, "echo sourced", PYTHON=str(stub(tmp_path, "managed")))
    assert done.stdout == "sourced\n" and done.stderr == ""
    assert not (checkout / ".venv").exists() and not (checkout / ".cache").exists()


def test_scripts_run_with_the_chosen_python_and_ci_installs_hf() -> None:
    for script in ("test.sh", "demo.sh"):
        text = (SCRIPTS / script).read_text()
        assert 'PYTHON="$(setup_choose_python)"' in text, script
        assert "python examples" not in text.replace('"$PYTHON" examples', ""), script  # no bare `python`
    assert "--extras ''" in (SCRIPTS / "demo.sh").read_text()  # the demo needs no test tools
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert 'ATTNC_EXTRAS="test,hf"' in ci
    assert "bash scripts/test.sh" in ci and "bash scripts/test.sh" in readme


def test_the_venv_is_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "-q", ".venv/bin/python"], cwd=ROOT, timeout=60)
    assert done.returncode == 0
