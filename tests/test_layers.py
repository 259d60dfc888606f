"""Layers only import downward, and no module imports itself back: the import statements of every
module, read from its source (AST, including imports inside functions), checked against the layer
order below and, as a graph, for cycles."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ffcv_cram"
# layer -> the layers below it, which it may import besides itself. "": the top-level modules
# (atomic, choices, config, prune_groups, ...), the floor every layer may stand on.
BELOW = {
    "": set(),
    "kernels": {""},
    "sparsity": {"", "kernels"},  # the kernels are backends of sparsity.masks
    "models": {""},
    "data": {""},
    "runtime": {""},  # shared by the trainer and the sweep, below both
    "optim": {"", "kernels", "sparsity"},
    "train": {"", "kernels", "sparsity", "models", "data", "runtime", "optim"},  # applications:
    "sweep": {"", "kernels", "sparsity", "models", "data", "runtime"},  # nothing imports them
}


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of everything `module` (e.g. 'ffcv_cram.sparsity.bnt') imports; for
    `from X import y` both X and X.y, since y may be a submodule."""
    found = set()
    for base, names in _import_statements(source, module):
        found.add(base)
        found.update(f"{base}.{name}" for name in names)
    return found


def _import_statements(source: str, module: str):
    """(absolute module, names taken from it) per import statement, wherever it stands."""
    package = module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:  # relative: from the package, up level - 1 packages
                parents = package[:len(package) - node.level + 1]
                base = ".".join(parents + ([node.module] if node.module else []))
            yield base, tuple(alias.name for alias in node.names)


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "ffcv_cram" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in BELOW else ""


def violations(source: str, module: str) -> list[str]:
    own = module.split(".")[1] if module.count(".") >= 2 else ""
    allowed = BELOW[own] | {own}
    return sorted(name for name in imported_modules(source, module)
                  if layer_of(name) not in (None, *allowed))


def modules(public_api: bool = False):
    """(path, module name) of every module; ffcv_cram/__init__.py (the public API, loaded lazily
    by name) only with `public_api`."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) == 2 and not public_api:
            continue
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the modules of `sources` it imports: `from X import y` depends on X.y where that
    is a module, else on X (its parent packages are importing already: no edge to them)."""
    graph = {}
    for module, source in sources.items():
        needed = set()
        for base, names in _import_statements(source, module):
            submodules = {f"{base}.{name}" for name in names} & sources.keys()
            needed |= submodules
            if len(submodules) < len(names) or not names:
                needed.add(base)
        graph[module] = needed & sources.keys()
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component, member = set(), None
            while member != node:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(component)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_layer_imports_only_downward():
    found = {module: bad for path, module in modules()
             if (bad := violations(path.read_text(), module))}
    assert not found, f"imports against the layering (see docs/architecture.md): {found}"


def test_no_module_imports_itself_back():
    graph = import_graph({module: path.read_text() for path, module in modules(public_api=True)})
    found = cycles(graph)
    assert not found, f"import cycles (a module reached again from its own imports): {found}"


def test_the_layers_form_an_order_that_covers_every_package():
    for layer, below in BELOW.items():
        assert layer not in below, layer
        for lower in below:  # transitive: what a layer below may import, this one may too
            assert BELOW[lower] <= below, (layer, lower)
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == BELOW.keys() - {""}, "place every package in BELOW"


def test_the_sparsity_library_is_covered():
    names = {module for _, module in modules()}
    assert {"ffcv_cram.sparsity.masks", "ffcv_cram.sparsity.prune", "ffcv_cram.sparsity.bnt"} <= names
    assert not any(n.startswith("ffcv_cram.sparsity.") and n.rsplit(".", 1)[1] in
                   ("job", "sweep", "report", "checkpoints") for n in names)


@pytest.mark.parametrize("source, module", [
    ("from ..optim.cram import parse_pattern", "ffcv_cram.sparsity.bnt"),
    ("from .. import train", "ffcv_cram.sparsity.bnt"),
    ("import ffcv_cram.data.pipelines", "ffcv_cram.sparsity.bnt"),
    ("def f():\n    from ..sweep.job import run_sweep\n", "ffcv_cram.sparsity.bnt"),
    ("from ffcv_cram.runtime import dist", "ffcv_cram.sparsity.bnt"),
    ("def f():\n    from ..sparsity.masks import nm_groupable\n", "ffcv_cram.kernels.triton_step"),
    ("from .kernels import triton_step", "ffcv_cram.prune_groups"),
    ("from ..optim import TopkCrAM", "ffcv_cram.sweep.job"),
])
def test_the_check_catches_an_upward_import(source, module):
    assert violations(source, module)


def test_the_check_allows_downward_imports():
    assert not violations("from .masks import nm_masks\nfrom .. import kernels\n"
                          "from ..progress import progress_bar\nimport torch",
                          "ffcv_cram.sparsity.prune")
    assert not violations("from ..sparsity.masks import parse_pattern\nfrom ..runtime.dist import setup",
                          "ffcv_cram.sweep.job")
    assert not violations("from ..prune_groups import nm_groupable", "ffcv_cram.kernels.triton_nm")


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import():
    sources = {"ffcv_cram.a": "", "ffcv_cram.a.x": "from .y import f\n",
               "ffcv_cram.a.y": "def f():\n    from . import x\n",
               "ffcv_cram.a.z": "from . import x\nimport ffcv_cram.a\n"}
    graph = import_graph(sources)
    assert graph["ffcv_cram.a.y"] == {"ffcv_cram.a.x"}  # the submodule, not its package
    assert graph["ffcv_cram.a.z"] == {"ffcv_cram.a.x", "ffcv_cram.a"}
    assert cycles(graph) == [{"ffcv_cram.a.x", "ffcv_cram.a.y"}]
    sources["ffcv_cram.a.y"] = "def f():\n    from .. import a\n"  # (the package: no cycle)
    assert cycles(import_graph(sources)) == []
