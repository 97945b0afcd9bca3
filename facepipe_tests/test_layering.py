"""facepipe's imports run one way: clients -> definitions -> the Dagster layer -> plain modules ->
the store -> the engine and settings. Read from the source with `ast`, imports inside functions
included, so a circle cannot hide in a function body."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facepipe"

# From the bottom up; a module may import only modules of its own layer or a lower one.
LAYERS = [
    ("settings", {"facepipe.settings"}),
    ("engine", {"facepipe.engine"}),
    ("store", {"facepipe.store"}),
    (
        "plain modules",
        {
            "facepipe.request",
            "facepipe.watching",
            "facepipe.people",
            "facepipe.search",
            "facepipe.notify",
            "facepipe.thumbnails",
            "facepipe.history",
            "facepipe.instance",
            "facepipe.postgres_storage",
            "facepipe.worker_check",
            "facepipe.celery_executor",
        },
    ),
    ("Dagster layer", {"facepipe.defs"}),
    ("definitions", {"facepipe.definitions", "facepipe.worker_preload"}),
    (
        "clients",
        {
            "facepipe.celery_worker",
            "facepipe.runs",
            "facepipe.remote",
            "facepipe.cli",
            "facepipe.cli_people",
            "facepipe.api",
        },
    ),
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the README's map)")


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


def test_the_engine_and_the_store_import_no_dagster():
    for path in [*(PACKAGE / "engine").rglob("*.py"), PACKAGE / "store.py"]:
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
