"""Hermes Agent 0.19 and hermes-ledger installed side by side.

The test environment has both (``hermes-agent`` is in the ``test`` extra). These
tests use the real installed distributions, scripts and interpreters, no mocks:
Hermes keeps its ``hermes`` script and its top-level packages (``gateway``,
``hermes_state``, ``hermes_cli``…); everything of ours is under ``hermes_ledger``
and our one script is ``hermes-ledger``. The last tests build our wheel from a copy
of this working tree and install it, alone, into a fresh virtualenv.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from importlib.metadata import (
    Distribution,
    PackagePath,
    PathDistribution,
    distribution,
    packages_distributions,
)
from pathlib import Path
from typing import Any

import pytest
from helpers import installed_script

REPO = Path(__file__).resolve().parent.parent
OURS = "hermes-ledger"
HERMES = "hermes-agent"
OUR_PACKAGE = "hermes_ledger"
OUR_SCRIPT = "hermes-ledger"
CLI_ENTRY = "hermes_ledger.gateway.cli:main"


def sandbox_env(home: Path) -> dict[str, str]:
    """An environment whose home directories are ``home``: Hermes writes into
    ``$HERMES_HOME`` as soon as ``gateway.run`` is imported."""
    env = {"HOME": str(home), "HERMES_HOME": str(home), "PATH": os.defpath}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def files_of(name: str) -> dict[Path, PackagePath]:
    """The files a distribution's RECORD lists, by their resolved location."""
    files = distribution(name).files
    assert files, f"{name} has no RECORD to list its files"
    return {Path(distribution(name).locate_file(f)).resolve(): f for f in files}


def console_scripts(dist: Distribution) -> dict[str, str]:
    return {ep.name: ep.value for ep in dist.entry_points.select(group="console_scripts")}


# -- a. `hermes` is Hermes' script; ours is `hermes-ledger` -----------------------------


def test_hermes_sessions_help_is_hermes_own(tmp_path: Path) -> None:
    hermes = installed_script("hermes")
    done = run([hermes, "sessions", "--help"], tmp_path, sandbox_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: hermes sessions")
    choices = {c for group in re.findall(r"\{([^}]*)\}", done.stdout) for c in group.split(",")}
    assert {"list", "prune", "export", "delete", "stats"} <= choices
    # The script on disk is the one hermes-agent's RECORD lists, not ours.
    script = Path(hermes).resolve()
    assert script in files_of(HERMES)
    assert script not in files_of(OURS)
    assert "from hermes_cli.main import main" in script.read_text()


def test_our_only_console_script_is_hermes_ledger() -> None:
    ours = distribution(OURS)
    assert console_scripts(ours) == {OUR_SCRIPT: CLI_ENTRY}
    assert list(ours.entry_points.select(group="gui_scripts")) == []
    assert "hermes" not in {ep.name for ep in ours.entry_points}
    assert console_scripts(distribution(HERMES))["hermes"] == "hermes_cli.main:main"


# -- b. Hermes' packages import; `gateway` is Hermes' -----------------------------------

IMPORT_HERMES = """
import json, sys
import gateway.run, hermes_state
print(json.dumps({"gateway": gateway.__file__, "run": gateway.run.__file__,
                  "hermes_state": hermes_state.__file__, "path": sys.path}))
"""


def test_hermes_packages_import_in_an_isolated_interpreter(tmp_path: Path) -> None:
    done = run([sys.executable, "-I", "-c", IMPORT_HERMES], tmp_path, sandbox_env(tmp_path))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    hermes = files_of(HERMES)
    for name in ("gateway", "run", "hermes_state"):
        assert Path(found[name]).resolve() in hermes, found[name]
        assert not Path(found[name]).resolve().is_relative_to(REPO)
    assert str(tmp_path) not in found["path"] and "" not in found["path"]


def test_gateway_in_this_process_is_hermes_package() -> None:
    hermes = distribution(HERMES)
    for name, path in (("gateway", "gateway/__init__.py"), ("hermes_state", "hermes_state.py")):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        origin = Path(spec.origin).resolve()
        assert not origin.is_relative_to(REPO), f"{name} is imported from the repository"
        assert origin == Path(hermes.locate_file(path)).resolve()
    ours = importlib.util.find_spec(f"{OUR_PACKAGE}.gateway")
    assert ours is not None and ours.origin is not None
    assert Path(ours.origin).resolve() not in files_of(HERMES)


# -- c. the installed hermes-ledger script ----------------------------------------------


def test_the_installed_hermes_ledger_script_inits_and_reports(tmp_path: Path) -> None:
    script = installed_script(OUR_SCRIPT)
    env = sandbox_env(tmp_path / "home")
    db = tmp_path / "given.db"

    missing = run([script, "status", "--db", str(db)], tmp_path, env)
    assert missing.returncode == 1
    assert f"there is no ledger at {db}" in missing.stderr

    created = run([script, "init", "--db", str(db), "--json"], tmp_path, env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["created"] is True
    status = run([script, "status", "--db", str(db), "--json"], tmp_path, env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert (report["path"], report["created"], report["events"]) == (str(db), False, 0)
    assert report["schema_version"] == report["latest_schema_version"] >= 1

    # Without --db: the ledger in $HERMES_HOME, which `init` creates.
    home_init = run([script, "init"], tmp_path, env)
    assert home_init.returncode == 0, home_init.stderr
    assert (tmp_path / "home" / "ledger.db").is_file()
    home_status = run([script, "status"], tmp_path, env)
    assert home_status.returncode == 0, home_status.stderr
    assert str(tmp_path / "home" / "ledger.db") in home_status.stdout


# -- d. what each distribution installs -------------------------------------------------

EDITABLE_PTH = re.compile(r"__editable__\.hermes_ledger-[^/]+\.pth")
EDITABLE_FINDER = re.compile(r"__editable___hermes_ledger_\w+_finder\.py")
EDITABLE_FINDER_PYC = re.compile(r"__editable___hermes_ledger_\w+_finder\.[\w-]+\.pyc")


def is_editable(dist: Distribution) -> bool:
    direct = dist.read_text("direct_url.json")
    return bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))


def test_no_file_is_installed_by_both_distributions() -> None:
    ours, hermes = files_of(OURS), files_of(HERMES)
    assert set(ours) & set(hermes) == set()
    assert {"gateway/__init__.py", "gateway/run.py", "hermes_state.py"} <= {
        str(f) for f in hermes.values()
    }
    assert Path(installed_script("hermes")).resolve() in hermes

    script = Path(installed_script(OUR_SCRIPT)).resolve()
    unexpected = []
    for path, f in ours.items():
        first = f.parts[0]
        if first == OUR_PACKAGE or re.fullmatch(r"hermes_ledger-[^/]+\.dist-info", first):
            continue
        if first == ".." and path == script:
            continue
        if EDITABLE_PTH.fullmatch(str(f)) or EDITABLE_FINDER.fullmatch(str(f)):
            continue
        if len(f.parts) == 2 and first == "__pycache__" and EDITABLE_FINDER_PYC.fullmatch(f.name):
            continue
        unexpected.append(str(f))
    assert unexpected == []


def finder_names(source: str) -> set[str]:
    """The module names an editable finder maps (its MAPPING and NAMESPACES)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("MAPPING", "NAMESPACES"):
            names |= set(ast.literal_eval(value))
    return names


def importable_names(directory: Path) -> set[str]:
    """Top-level names a directory on sys.path would make importable."""
    names = set()
    for entry in directory.iterdir():
        stem = entry.name.split(".")[0]
        if entry.is_dir() and entry.name.isidentifier() and entry.name != "__pycache__":
            names.add(entry.name)
        elif entry.suffix in (".py", ".so", ".pyd") and stem.isidentifier():
            names.add(stem)
    return names


def test_every_top_level_name_we_install_is_hermes_ledger() -> None:
    dist = distribution(OURS)
    names: set[str] = set()
    top_level = dist.read_text("top_level.txt")
    if top_level is not None:
        names |= set(top_level.split())
    mapped: set[str] = set()  # what an editable finder maps
    pth_dirs: list[Path] = []  # what a .pth file puts on sys.path
    for path, f in files_of(OURS).items():
        first = f.parts[0]
        if first == ".." or first == "__pycache__" or first.endswith(".dist-info"):
            continue
        if EDITABLE_FINDER.fullmatch(str(f)):
            mapped |= finder_names(path.read_text())
        elif f.suffix == ".pth":
            for line in path.read_text().splitlines():
                if not line.strip() or line.startswith("#"):
                    continue
                if line.startswith(("import ", "import\t")):
                    assert "__editable___hermes_ledger_" in line, line
                else:  # a directory put on sys.path: what it holds becomes importable
                    pth_dirs.append(Path(line.strip()))
                    names |= importable_names(pth_dirs[-1])
        elif len(f.parts) == 1:
            names.add(f.stem)  # a top-level module
        else:
            names.add(first)  # a top-level package
    names |= {name.partition(".")[0] for name in mapped}
    if is_editable(dist):  # its names are in the finder or the .pth, which must be read
        assert mapped or pth_dirs, "an editable install with neither a finder nor a .pth path"
    assert names == {OUR_PACKAGE}
    provided = {name for name, dists in packages_distributions().items() if OURS in dists}
    assert provided == {OUR_PACKAGE}


# -- e. our wheel, alone in a fresh virtualenv ------------------------------------------


def source_copy(target: Path) -> Path:
    """What the build reads (pyproject, readme, the package-dir folders), copied so
    that the build's own build/ and egg-info never land in the working tree."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    readme = project["project"].get("readme")
    files = {"pyproject.toml", *([readme] if isinstance(readme, str) else [])}
    files |= {n for n in ("setup.py", "setup.cfg", "MANIFEST.in") if (REPO / n).exists()}
    target.mkdir()
    for name in sorted(files):
        shutil.copy2(REPO / name, target / name)
    for folder in sorted(folders):
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(REPO / folder, target / folder, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("wheel")
    src = source_copy(root / "src")
    out = root / "dist"
    done = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(src)],
        root,
        {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(
            "could not build the wheel offline (--no-build-isolation needs a setuptools that "
            "builds wheels, >=70.1, or the `wheel` package, in the test environment):\n"
            + done.stderr[-3000:]
        )
    (built,) = out.glob("hermes_ledger-*.whl")
    yield built


def test_the_wheel_holds_only_hermes_ledger(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        assert re.fullmatch(r"hermes_ledger-[^-]+\.dist-info", dist_info)
        assert {n.split("/")[0] for n in names} == {OUR_PACKAGE, dist_info}
        built = PathDistribution(zipfile.Path(whl, f"{dist_info}/"))  # type: ignore[arg-type]
        assert built.metadata["Name"] == OURS
        assert sorted((ep.group, ep.name, ep.value) for ep in built.entry_points) == [
            ("console_scripts", OUR_SCRIPT, CLI_ENTRY),
            ("hermes_agent.plugins", "ledger", "hermes_ledger.gateway.plugin"),  # docs/hermes.md
        ]
        top_level = built.read_text("top_level.txt")
        assert top_level is None or top_level.split() == [OUR_PACKAGE]
    migrations = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    assert migrations
    assert {f"hermes_ledger/migrations/{m}" for m in migrations} <= set(names)
    assert "hermes_ledger/migrations/__init__.py" in names


ONLY_OURS = """
import importlib.util, json
from importlib.resources import files
try:
    import gateway
    found = gateway.__file__
except ModuleNotFoundError as exc:
    found = "ModuleNotFoundError: " + str(exc.name)
ours = importlib.util.find_spec("hermes_ledger.gateway")
print(json.dumps({
    "gateway": found,
    "hermes": [n for n in ("hermes_state", "hermes_cli") if importlib.util.find_spec(n)],
    "ours": ours and ours.origin,
    "sql": sorted(p.name for p in files("hermes_ledger.migrations").iterdir()
                  if p.name.endswith(".sql")),
}))
"""


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def test_with_only_hermes_ledger_installed_gateway_is_not_importable(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    env = sandbox_env(tmp_path)
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    assert made.returncode == 0, made.stderr
    python = venv_python(venv)
    installed = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install",
         "--no-deps", "--no-index", "-q", str(wheel)],
        tmp_path,
        env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr

    done = run([str(python), "-I", "-c", ONLY_OURS], tmp_path, env)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert found["gateway"] == "ModuleNotFoundError: gateway"
    assert found["hermes"] == []
    assert found["ours"] is not None
    assert Path(found["ours"]).resolve().is_relative_to(venv.resolve())
    assert found["sql"] == sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    scripts = python.parent
    assert (scripts / OUR_SCRIPT).exists() and not (scripts / "hermes").exists()
