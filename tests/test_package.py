"""What the package is made of: no import cycle among its modules, no lab module in what
setuptools installs, the version written once, and the files a release needs."""
import ast
import os
import re
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "clif_kernels"

# What a wheel installs: the runtime, and the commands a user runs to check an installation and
# measure the speed-up on their own machine (check, bench, bench-model) or see CLIF learn (demo).
# Benchmark scripts, plots and developer tools live in benchmarks/ and dev/ of a clone.
# One list, shared with .ci/package (which checks the built wheel against it).
with open(os.path.join(ROOT, ".ci", "wheel_modules.txt")) as _f:
    INSTALLED = {line.strip() for line in _f if line.strip() and not line.startswith("#")}


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _modules():
    """{module name: file} for every module of the package in the tree."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, PKG)):
        for name in files:
            if name.endswith(".py") and name != "_build_info.py":  # a build output
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _imports(module, path, known):
    """The package's modules that `module` imports, anywhere in its file (a function-level
    import closes a cycle as surely as a top-level one, only later)."""
    is_pkg = path.endswith("__init__.py")
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = ".".join(base[:len(base) - node.level + 1])
                target = f"{parent}.{node.module}" if node.module else parent
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            # The deepest module of the package the name reaches (`pkg.mod.attr` -> `pkg.mod`).
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                if ".".join(parts[:i]) in known:
                    found.add(".".join(parts[:i]))
                    break
    # Importing a submodule runs its packages' __init__ first; those are not edges of interest.
    return {m for m in found if m != module and not module.startswith(m + ".")}


def find_cycles(graph):
    """Every strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert graph["clif_kernels.tools.bench_model"] >= {"clif_kernels.tools.benchmark"}
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_imports():
    import importlib
    for module in _modules():
        if module == "clif_kernels.spikingjelly":
            pytest.importorskip("spikingjelly.activation_based.neuron")
        importlib.import_module(module)


def test_what_setuptools_installs_holds_no_lab_module():
    config = _pyproject()["tool"]["setuptools"]
    files = set()
    for package in config["packages"]:
        folder = os.path.join(ROOT, *package.split("."))
        files |= {f"{package.replace('.', '/')}/{n}" for n in os.listdir(folder)
                  if n.endswith(".py") and n != "_build_info.py"}
    assert files == INSTALLED
    assert not any(p.startswith(("benchmarks", "dev")) for p in config["packages"])


def test_the_version_is_written_once():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "clif_kernels._version.__version__"}
    pattern = re.compile(r"""^\s*(__version__|version)\s*=\s*["']\d""", re.M)
    holders = [p for p in list(_modules().values()) + [os.path.join(ROOT, "setup.py")]
               if pattern.search(open(p).read())]
    assert holders == [os.path.join(ROOT, "clif_kernels", "_version.py")]
    import clif_kernels
    from clif_kernels._version import __version__
    assert clif_kernels.__version__ == __version__


def test_release_files():
    project = _pyproject()["project"]
    assert open(os.path.join(ROOT, "LICENSE")).read().startswith("MIT License")
    assert project["license"] == {"text": "MIT"}
    assert os.path.exists(os.path.join(ROOT, PKG, "py.typed"))
    assert project["scripts"]["clif-kernels"] == "clif_kernels.cli:main"
    assert any(r.startswith("spikingjelly>=2.0,<2.1")
               for r in project["optional-dependencies"]["spikingjelly"])
    manifest = open(os.path.join(ROOT, "MANIFEST.in")).read()
    assert "recursive-include csrc *.h *.cpp *.cu" in manifest
    assert "exclude clif_kernels/_build_info.py" in manifest


def test_public_names():
    import clif_kernels
    assert clif_kernels.__all__ == ["clif", "lif", "CLIFNode", "LIFNode", "spikes_as_bits",
                                    "__version__"]
    for name in clif_kernels.__all__:
        assert getattr(clif_kernels, name) is not None
    assert callable(clif_kernels.clif) and isinstance(clif_kernels.CLIFNode, type)
    with pytest.raises(AttributeError):
        clif_kernels.no_such_name
