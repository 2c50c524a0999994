"""The package's layers point down, and no module reaches into another's private names."""

import ast
from pathlib import Path

import synfer

ROOT = Path(synfer.__file__).parent
TESTS = Path(__file__).parent

# Lower layers first. A module may import from its own layer or any layer below, never above.
LAYERS = [
    {"errors", "expressions", "aus", "registry", "prompts", "devices", "progress", "plots", "assets"},
    {"models"},
    {"pipelines"},
    {"data"},
    {"synth", "labelers", "train", "eval", "world"},
    {"cli", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# Stages may use each other's results sideways (a trainer reports with eval's metrics), but the
# library of models and pipelines never reaches up into a stage or the command line.


def modules(folder: Path):
    for path in sorted(folder.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def imported(path: Path, tree: ast.AST):
    """(module imported, names taken from it) for every import, relative ones resolved against ``path``."""
    package = path.relative_to(ROOT.parent).with_suffix("").parts
    if package[-1] == "__init__":
        package = package[:-1]
    else:
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def top_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "synfer" and len(parts) > 1 else None


def test_synfer_imports_only_point_down():
    wrong = []
    for path, tree in modules(ROOT):
        relative = path.relative_to(ROOT).parts
        own = relative[0].removesuffix(".py") if len(relative) > 1 or relative[0] != "__init__.py" else None
        if own is None:
            continue  # the package root re-exports lazily
        assert own in RANK, f"{path}: put this module in a layer of tests/test_layers.py"
        for target, _ in imported(path, tree):
            other = top_package(target)
            if other is not None and other in RANK and RANK[other] > RANK[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "imports that point up a layer:\n" + "\n".join(wrong)


def test_no_module_imports_a_private_name_of_another():
    wrong = []
    for folder in (ROOT, TESTS, ROOT.parent / "benchmarks"):
        for path, tree in modules(folder):
            for target, names in imported(path, tree):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private or target.split(".")[-1] == "conftest":
                    wrong.append(f"{path}: from {target} import {', '.join(private) or '(conftest)'}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for path, tree in modules(ROOT):
        relative = path.relative_to(ROOT).parts
        if len(relative) == 1:
            continue
        own = relative[0]
        for target, _ in imported(path, tree):
            other = top_package(target)
            if other is not None and other != own and (ROOT / other).is_dir():
                graph.setdefault(own, set()).add(other)
    visiting, done = [], set()

    def visit(package):
        if package in done:
            return
        assert package not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(package):], package])
        visiting.append(package)
        for other in sorted(graph.get(package, ())):
            visit(other)
        visiting.pop()
        done.add(package)

    for package in sorted(graph):
        visit(package)
    assert graph["cli"] and "models" in graph["pipelines"]  # the graph was read


def test_the_command_line_starts_without_loading_torch():
    # `synfer --help` and every option's checks run before any model stack is imported.
    import subprocess
    import sys

    code = "import sys, synfer.cli; print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'webdataset') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
