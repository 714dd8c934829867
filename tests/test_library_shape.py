"""The library stays readable: short modules of one concept each and short functions (the limits of the project's
code style), and imports that point one way, so that no module imports one that imports it back."""

import ast
from pathlib import Path

import diffusion_lib

LIBRARY = Path(diffusion_lib.__file__).parent
MODULE_LINES, FUNCTION_LINES = 350, 60
MODULES = sorted(LIBRARY.rglob("*.py"))


def test_no_module_is_over_its_line_limit():
    long = {
        path.relative_to(LIBRARY).as_posix(): n
        for path in MODULES
        if (n := len(path.read_text().splitlines())) > MODULE_LINES
    }
    assert not long, f"modules over {MODULE_LINES} lines: {long}"


def test_no_function_is_over_its_line_limit():
    long = {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long[f"{path.relative_to(LIBRARY).as_posix()}:{node.name}"] = lines
    assert not long, f"functions over {FUNCTION_LINES} lines: {long}"


def imported_modules(path):
    """The library modules the module at path imports at its top level (relative imports only, as the library
    writes them); imports inside functions are deliberate late imports and are left out."""
    package = path.parent
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.parents[node.level - 2] if node.level > 1 else package
            parts = node.module.split(".") if node.module else []
            for alias in node.names:
                for candidate in (base.joinpath(*parts, alias.name), base.joinpath(*parts)):
                    for file in (candidate.with_suffix(".py"), candidate / "__init__.py"):
                        if file.exists() and file != path:
                            found.add(file)
                            break
                    else:
                        continue
                    break
    return found


def test_the_top_level_imports_form_no_circle():
    graph = {path: imported_modules(path) for path in MODULES}
    state = {}

    def visit(path, trail):
        if state.get(path) == "done":
            return
        assert state.get(path) != "open", " -> ".join(p.relative_to(LIBRARY).as_posix() for p in (*trail, path))
        state[path] = "open"
        for imported in graph[path]:
            visit(imported, (*trail, path))
        state[path] = "done"

    for path in MODULES:
        visit(path, ())
