"""The package's layer rule (README, "Abstractions"): imports point down, never up or in a circle.

    errors -> structures, fileio, device, progress -> config, ops, formats (file formats: readers and writers) -> data, model
    -> inference -> evaluation -> engine -> the front ends: the tools under the commands (viz's drawing, pseudo_label,
    the model zoo's export, scale: the Dask paths) -> the command lines (cli: one module per command) -> the Python API
    and ``python -m maskrcnn``

Every import counts, also those inside functions (they only delay the cycle).
"""
import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "maskrcnn")
LAYERS = [("errors",), ("structures", "fileio", "device", "progress"), ("config", "ops", "formats"), ("data", "model"),
          ("inference",), ("evaluation",), ("engine",), ("viz", "pseudo_label", "zoo", "scale"), ("cli",),
          ("api", "__main__")]
LAYER = {part: k for k, parts in enumerate(LAYERS) for part in parts}


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield rel[: -len(".__init__")] if rel.endswith(".__init__") else rel, os.path.join(root, f)


def _imports(path):
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maskrcnn"):
            for alias in node.names:  # `from maskrcnn.formats import rle` imports a module
                yield f"{node.module}.{alias.name}" if node.module == "maskrcnn" or alias.name.islower() else node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("maskrcnn"))


def _graph():
    mods = dict(_modules())
    graph = {}
    for mod, path in mods.items():
        deps = set()
        for target in _imports(path):
            while target not in mods and "." in target:  # a name inside a module -> the module
                target = target.rsplit(".", 1)[0]
            if target in mods and target != mod and target != "maskrcnn":
                deps.add(target)
        graph[mod] = deps
    return graph


def _part(mod):
    return mod.split(".")[1] if mod.count(".") else mod


def test_imports_point_down_the_layers():
    wrong = []
    for mod, deps in _graph().items():
        if mod in ("maskrcnn", "maskrcnn._C"):
            continue
        for dep in deps:
            a, b = _part(mod), _part(dep)
            if a != b and LAYER[b] >= LAYER[a] and b != "_C":
                wrong.append(f"{mod} -> {dep}")
    assert not wrong, "imports that do not point down: " + ", ".join(sorted(wrong))


def test_no_circular_imports():
    graph = _graph()
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "circular imports: " + "; ".join(cycles)


def test_every_part_of_the_package_has_a_layer():
    assert {_part(m) for m in _graph()} - {"maskrcnn", "_C"} <= set(LAYER)


def test_the_command_lines_live_in_one_package():
    """Every command's ``main`` (``cli.run``) and every ``__main__`` block is in ``maskrcnn/cli`` or is
    ``python -m maskrcnn``'s dispatcher: one place to read and change the front ends."""
    outside = []
    for mod, path in _modules():
        if _part(mod) in ("cli", "__main__"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "__name__":
                outside.append(f"{mod}: __main__ block")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run"
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "cli"):
                outside.append(f"{mod}: cli.run")
    assert not outside, "command lines outside maskrcnn/cli: " + ", ".join(sorted(outside))
