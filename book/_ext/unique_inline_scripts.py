"""Write each script of a page once.

Sphinx 7.4 adds the inline scripts that extensions register after the builder
starts (sphinx-thebe's ``const THEBE_JS_URL = ...``, sphinx-togglebutton's
selector) to every page twice: once as given and once again, with an empty
file name instead of none, when it prepares writing. A ``const`` declared twice
is a console error on every page. This drops the second copy.
"""

from sphinx.application import Sphinx


def script_key(script) -> tuple:
    return (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))


def unique_scripts(scripts: list) -> list:
    """``scripts`` without repeats, in their first order."""
    seen = set()
    unique = []
    for script in scripts:
        key = script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    return unique


def drop_repeated_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(context["script_files"])


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
