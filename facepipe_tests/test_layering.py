"""facepipe's tree is its layering: each folder (or top-level module) directly under facepipe/ is one
layer, and imports run one way, from the clients down to the engine and settings. Read from the
source with `ast`, imports inside functions included, so a circle cannot hide in a function body."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facepipe"

# The layers from the bottom up, each the folders and top-level modules it is made of; a module may
# import only modules of its own layer or a lower one. docs/architecture.md says what each holds.
LAYERS = [
    ("settings", {"settings"}),
    ("engine", {"engine"}),
    ("store", {"store"}),
    ("domain", {"domain"}),
    ("platform", {"platform"}),
    ("Dagster layer", {"defs"}),
    ("definitions", {"definitions", "worker_preload"}),
    ("clients", {"clients"}),
    ("HTTP API", {"api"}),
    ("command line", {"cli"}),
]
MAX_TOP_LEVEL_MODULES = 8
MAX_MODULE_LINES = 600


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of `facepipe.<top>...`: the one its top-level folder or module is in."""
    top = module.split(".")[1]
    for index, (_, tops) in enumerate(LAYERS):
        if top in tops:
            return index
    raise AssertionError(f"facepipe/{top} is in no layer: add it to LAYERS (and to docs/architecture.md's map)")


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each facepipe module and the facepipe modules it imports, anywhere in its body."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from facepipe import settings` imports the module facepipe.settings
                names = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                ]
            else:
                continue
            imported |= {n for n in names if n in modules and n != name}
        graph[name] = imported - {"facepipe"}  # the package's __init__ is a docstring
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules around it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return path[path.index(imported) :] + [imported]
            if imported not in state and (circle := visit(imported)):
                return circle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def against_the_layering(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} ({LAYERS[layer_of(imported)][0]})"
        for module, imports in sorted(graph.items())
        for imported in sorted(imports)
        if layer_of(imported) > layer_of(module)
    ]


def test_facepipe_imports_have_no_circle():
    assert find_circle(import_graph()) is None


def test_every_import_runs_down_the_layers():
    assert against_the_layering(import_graph()) == []


def test_every_module_is_in_a_layer_the_tree_is_small_and_no_module_is_long():
    modules = [p for p in PACKAGE.rglob("*.py")]
    for path in modules:
        if path != PACKAGE / "__init__.py":  # the package's docstring
            layer_of(module_name(path))
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, top_level
    long = {
        str(p.relative_to(PACKAGE)): n for p in modules if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_the_engine_and_the_store_import_no_dagster():
    for path in [*(PACKAGE / "engine").rglob("*.py"), *(PACKAGE / "store").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in imported if m.split(".")[0].startswith("dagster")}, path


@pytest.mark.parametrize(
    "source, found",
    [
        # the circle of the first version: digests.py was both the vocabulary of the definitions and the
        # client that launched them (imports inside functions, as it had them)
        (
            {
                "definitions.py": "from facepipe.defs.sensors import build_sensors",
                "defs/__init__.py": "",
                "defs/sensors.py": "def f():\n    from facepipe.digests import run_config",
                "digests.py": "def g():\n    from facepipe.definitions import get_digest_job",
            },
            ["facepipe.definitions", "facepipe.defs.sensors", "facepipe.digests", "facepipe.definitions"],
        ),
        ({"store.py": "from facepipe.engine import faces", "engine/__init__.py": "", "engine/faces.py": "x = 1"}, None),
    ],
)
def test_the_check_finds_a_circle_hidden_in_a_function(tmp_path, source, found):
    for name, text in source.items():
        (tmp_path / "facepipe" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "facepipe" / name).write_text(text)
    assert find_circle(import_graph(tmp_path / "facepipe")) == found


def test_the_check_finds_an_import_against_the_layering(tmp_path):
    (tmp_path / "facepipe" / "engine").mkdir(parents=True)
    (tmp_path / "facepipe" / "engine" / "__init__.py").write_text("")
    (tmp_path / "facepipe" / "engine" / "faces.py").write_text("def f():\n    from facepipe.store import FaceStore")
    (tmp_path / "facepipe" / "store.py").write_text("")
    assert against_the_layering(import_graph(tmp_path / "facepipe")) == [
        "facepipe.engine.faces (engine) imports facepipe.store (store)"
    ]
