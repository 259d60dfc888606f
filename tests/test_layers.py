"""Layers only import downward: the import statements of every module, read from its source (AST,
including imports inside functions), against the packages each layer must not reach."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ffcv_cram"
APPS = {"train", "sweep"}  # the applications: nothing below imports them
EVERYTHING = {"sparsity", "kernels", "models", "optim", "data", "runtime"} | APPS
# layer -> packages of ffcv_cram it must not import ("": the top-level modules: atomic, config, ...)
FORBIDDEN = {
    "": EVERYTHING,
    "kernels": EVERYTHING - {"kernels", "sparsity"},  # the kernels are backends of sparsity.masks
    "sparsity": EVERYTHING - {"kernels", "sparsity"},
    "models": EVERYTHING - {"models"},
    "optim": EVERYTHING - {"optim", "sparsity", "kernels"},
    "data": EVERYTHING - {"data"},
    "runtime": EVERYTHING - {"runtime"},  # shared by the trainer and the sweep, below both
    "train": {"sweep"},
    "sweep": {"train", "optim"},
}


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of everything `module` (e.g. 'ffcv_cram.sparsity.bnt') imports; for
    `from X import y` both X and X.y, since y may be a submodule."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:  # relative: from the package, up level - 1 packages
                parents = package[:len(package) - node.level + 1]
                base = ".".join(parents + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "ffcv_cram" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in EVERYTHING else ""


def violations(source: str, module: str) -> list[str]:
    own = module.split(".")[1] if module.count(".") >= 2 else ""
    forbidden = FORBIDDEN.get(own, set())
    return sorted(name for name in imported_modules(source, module)
                  if layer_of(name) in forbidden)


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) == 2:
            continue  # ffcv_cram/__init__.py: the public API, loaded lazily by name
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_layer_imports_only_downward():
    found = {module: bad for path, module in modules()
             if (bad := violations(path.read_text(), module))}
    assert not found, f"imports against the layering (see README, Layout): {found}"


def test_the_sparsity_library_is_covered():
    names = {module for _, module in modules()}
    assert {"ffcv_cram.sparsity.masks", "ffcv_cram.sparsity.prune", "ffcv_cram.sparsity.bnt"} <= names
    assert not any(n.startswith("ffcv_cram.sparsity.") and n.rsplit(".", 1)[1] in
                   ("job", "sweep", "report", "checkpoints") for n in names)


@pytest.mark.parametrize("source", [
    "from ..optim.cram import parse_pattern",
    "from .. import train",
    "import ffcv_cram.data.pipelines",
    "def f():\n    from ..sweep.job import run_sweep\n",
    "from ffcv_cram.runtime import dist",
])
def test_the_check_catches_an_upward_import(source):
    assert violations(source, "ffcv_cram.sparsity.bnt")


def test_the_check_allows_downward_imports():
    assert not violations("from .masks import nm_masks\nfrom .. import kernels\n"
                          "from ..progress import progress_bar\nimport torch",
                          "ffcv_cram.sparsity.prune")
    assert not violations("from ..sparsity.masks import parse_pattern\nfrom ..runtime.dist import setup",
                          "ffcv_cram.sweep.job")
