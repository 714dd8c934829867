"""IPython start-up file of the kernels that execute the book's chapters (installed by execution_key.py).

After every cell it writes the names of the library modules imported so far to
the file named by $BOOK_IMPORTS_FILE, so that the build knows which modules a
chapter ran on. Outside a book build the variable is unset and it does nothing.
Everything happens inside one function, deleted at the end, so that the
chapter's namespace gains no name (a chapter that forgot an import must fail
here as it would in Colab).
"""


def _install_import_recorder():
    import json
    import os
    import sys
    from pathlib import Path

    target = os.environ.get("BOOK_IMPORTS_FILE")
    if not target or "get_ipython" not in globals():
        return

    def record_imports(result=None):
        modules = sorted(name for name in sys.modules if name == "diffusion_lib" or name.startswith("diffusion_lib."))
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps({"modules": modules}) + "\n")

    get_ipython().events.register("post_run_cell", record_imports)  # noqa: F821 (IPython's namespace defines it)


_install_import_recorder()
del _install_import_recorder
