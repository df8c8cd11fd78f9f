"""The package's shape: one namespace, imports that point one way, each module loaded once."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The layers, each a folder of the checkout, in order: each may import its own layer and those
# before it. Where each installed package's source lives is pyproject's package-dir.
LAYERS = ("steadyscribe", "tasks", "flows", "app")
PACKAGE_OF = {"steadyscribe": "steadyscribe", "tasks": "steadyscribe.tasks", "flows": "steadyscribe.flows", "app": "steadyscribe.app"}


def package_modules() -> dict[str, Path]:
    """Every module of the package, by its installed name, and its source file."""
    modules = {}
    for layer, package in PACKAGE_OF.items():
        for path in (ROOT / layer).rglob("*.py"):
            parts = path.relative_to(ROOT / layer).with_suffix("").parts
            modules[".".join((package, *parts)).removesuffix(".__init__")] = path
    return modules


def layer_of(path: Path) -> str:
    """A module's layer: the top folder of the checkout that holds it."""
    return path.relative_to(ROOT).parts[0]


def imported_names(path: Path) -> set[str]:
    """Every module that `path` imports, anywhere in it (functions included), as absolute names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative imports would hide which layer a module reaches into: the package uses none.
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_layers_import_only_downwards():
    modules = package_modules()
    assert {"steadyscribe.tasks.chunk", "steadyscribe.flows.transcribe", "steadyscribe.app.cli"} <= modules.keys()
    assert {layer_of(path) for path in modules.values()} == set(LAYERS)
    violations = []
    for module, path in sorted(modules.items()):
        rank = LAYERS.index(layer_of(path))
        for name in sorted(imported_names(path)):
            if name.split(".")[0] in {"tasks", "flows", "app"}:
                violations.append(f"{module} imports {name} outside the steadyscribe namespace")
            elif name in modules and LAYERS.index(layer_of(modules[name])) > rank:
                violations.append(f"{module} ({layer_of(path)}) imports {name} ({layer_of(modules[name])})")
    assert not violations, "\n".join(violations)


def test_layer_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def later():\n    from steadyscribe.flows.transcribe import transcribe\n")
    assert "steadyscribe.flows.transcribe" in imported_names(source)


@pytest.mark.slow
def test_every_module_is_loaded_under_one_name():
    """Import the whole package from the checkout (where bare `tasks` would also resolve)."""
    script = """
import importlib, os, sys
from collections import defaultdict
sys.path.insert(0, os.getcwd())
for name in sys.argv[1:]:
    importlib.import_module(name)
by_file = defaultdict(set)
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path and os.path.realpath(path).startswith(tuple(os.path.join(os.getcwd(), d, "") for d in ("steadyscribe", "tasks", "flows", "app"))):
        by_file[os.path.realpath(path)].add(name)
twice = {path: sorted(names) for path, names in by_file.items() if len(names) > 1}
print(twice)
sys.exit(1 if twice else 0)
"""
    modules = sorted(package_modules())
    done = subprocess.run([sys.executable, "-c", script, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves a build/ folder beside the sources it builds.
    source = tmp_path_factory.mktemp("source") / "steadyscribe"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "out", "*.egg-info", "__pycache__", "tests", "bench"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    return next(out.glob("steadyscribe-*.whl"))


@pytest.mark.slow
def test_wheel_installs_one_namespace_with_its_profiles(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.split("/")[0] in {"tasks", "flows", "app", "profiles"}]
    assert {"steadyscribe/tasks/chunk.py", "steadyscribe/flows/transcribe.py", "steadyscribe/app/cli.py"} <= set(names)
    assert "steadyscribe/profile_files/cpu-small.yaml" in names
    # The speech detector's model and its licence note ship in the default install.
    assert {"steadyscribe/assets/silero_vad_v6.onnx", "steadyscribe/assets/LICENSE-silero-vad.txt"} <= set(names)


@pytest.mark.slow
def test_installed_package_works_outside_the_checkout(wheel, tmp_path):
    """The wheel's contents, first on the path, from a folder that is not the checkout."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env_path = f"import sys; sys.path.insert(0, {str(site)!r}); "

    def python(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", env_path + code], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert python("import tasks").returncode != 0
    assert python("import flows").returncode != 0
    assert python("import app").returncode != 0
    works = python(
        "import steadyscribe.tasks.chunk, steadyscribe.flows.transcribe, steadyscribe.profiles as p; "
        f"assert steadyscribe.tasks.chunk.__file__.startswith({str(site)!r}); print(p.load_profile('cpu-small').name)"
    )
    assert works.returncode == 0, works.stderr
    assert works.stdout.strip() == "cpu-small"
