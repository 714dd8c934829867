"""The artifact folder (store.py): where it is, the hashes that meta.json records (config, source, files), the files
it writes, and finishing an artifact.

Hashes are compared with hashlib over the exact bytes, source entries with the
definitions read from the file by hand, and written files are read back with
safetensors, PIL and json.
"""

import hashlib
import json
import os
import stat
import subprocess

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffusion_lib import checkpoints, store


def test_root_is_diffusion_artifacts_else_beside_the_library(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSION_ARTIFACTS", str(tmp_path))
    assert store.root() == tmp_path
    monkeypatch.delenv("DIFFUSION_ARTIFACTS")
    assert store.root() == store.PACKAGE.parent / "artifacts"
    assert (store.PACKAGE / "store.py").is_file()


def test_config_hash_is_a_short_sha256_of_sorted_json():
    config = {"b": [1, 2], "a": {"y": 1.5, "x": None}}
    expected = hashlib.sha256(b'{"a": {"x": null, "y": 1.5}, "b": [1, 2]}').hexdigest()[:16]
    assert store.config_hash(config) == expected
    assert store.config_hash({"a": {"x": None, "y": 1.5}, "b": [1, 2]}) == expected  # key order does not matter
    assert store.config_hash({**config, "b": [2, 1]}) != expected


def test_source_text_of_a_file_and_of_one_definition():
    text = (store.PACKAGE / "fit.py").read_text()
    assert store.source_text("fit.py") == text
    definition = store.source_text("fit.py:cosine_learning_rate")
    assert definition.startswith("def cosine_learning_rate(") and definition in text
    assert definition.rstrip().endswith("return lr * 0.5 * (1 + math.cos(math.pi * step / steps))")
    assert "def optimisation_step" not in definition
    hashes = store.source_hashes(["fit.py", "fit.py:cosine_learning_rate"])
    assert hashes == {
        "fit.py": hashlib.sha256(text.encode()).hexdigest()[:16],
        "fit.py:cosine_learning_rate": hashlib.sha256(definition.encode()).hexdigest()[:16],
    }
    with pytest.raises(ValueError, match="fit.py defines no top-level 'absent'"):
        store.source_text("fit.py:absent")


def test_file_hash_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "data.bin"
    content = bytes(range(256)) * 5000  # more than one 1 MiB block
    path.write_bytes(content)
    assert store.file_hash(path) == hashlib.sha256(content).hexdigest()


def test_finish_records_every_file_and_damage_is_found(tmp_path):
    folder = tmp_path / "artifact"
    store.save_weights(folder, {"w": torch.arange(6.0).reshape(2, 3)})
    store.save_json(folder, "metrics.json", {"fid": 1.5})
    (folder / "run").mkdir()  # folders are not recorded
    assert store.read_meta(folder) is None
    meta = store.finish(folder, {"name": "x"})
    assert not (folder / "meta.json.partial").exists()
    assert meta["name"] == "x"
    assert meta["files"] == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("metrics.json", "weights.safetensors")
    }
    assert store.read_meta(folder) == meta
    assert store.damaged_files(folder, meta) == []
    (folder / "metrics.json").write_text("{}")
    (folder / "weights.safetensors").unlink()
    assert store.damaged_files(folder, meta) == ["metrics.json", "weights.safetensors"]
    store.finish(folder, {"name": "x"})  # an old meta.json is not recorded as a file of the artifact
    assert set(store.read_meta(folder)["files"]) == {"metrics.json"}
    (folder / "meta.json.partial").write_text("{")  # left by a finish that was killed while writing it
    store.finish(folder, {"name": "x"})
    assert set(store.read_meta(folder)["files"]) == {"metrics.json"}
    assert store.damaged_files(folder, store.read_meta(folder)) == []


def test_saved_files_read_back(tmp_path):
    folder = tmp_path / "new" / "artifact"
    weights = {"a": torch.arange(4.0).t(), "b": torch.ones(2, 3)[:, 1]}  # non-contiguous views are stored too
    store.save_weights(folder, weights)
    loaded = load_file(folder / "weights.safetensors")
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    store.save_json(folder, "metrics.json", {"fid": 1.5, "fractions": [0.5, 0.5]})
    text = (folder / "metrics.json").read_text()
    assert json.loads(text) == {"fid": 1.5, "fractions": [0.5, 0.5]} and text.endswith("\n")

    images = torch.full((3, 1, 4, 4), -1.0)
    images[1] = 1.0
    images[2] = 5.0  # clamped to white
    store.save_grid(folder, "grid.png", images, nrow=2)
    with Image.open(folder / "grid.png") as grid:
        assert grid.size == (2 * (4 + 2) + 2, 2 * (4 + 2) + 2)  # two per row, two rows, 2 pixels of padding
        pixels = grid.convert("L")
        assert pixels.getpixel((2, 2)) == 0 and pixels.getpixel((8, 2)) == 255 and pixels.getpixel((2, 8)) == 255


def test_provenance_of_a_cpu_result(monkeypatch):
    monkeypatch.delenv("GIT_COMMIT", raising=False)
    found = store.provenance("cpu", 12.5)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=store.PACKAGE)
    assert found["git_commit"] == head.stdout.strip()
    assert found["device"] == "cpu" and found["device_name"] == "CPU" and found["cpu_made"] is True
    assert found["torch_version"] == torch.__version__ and found["seconds"] == 12.5
    assert len(found["built"]) == 10 and found["built"][4] == "-"
    monkeypatch.setenv("GIT_COMMIT", " abc123\n")
    assert store.provenance(torch.device("cpu"), 0.0)["git_commit"] == "abc123"


def test_stored_tensors_are_as_readable_as_any_file_written_here(tmp_path):
    """safetensors writes files private to their owner (0600); the library's are as the umask makes other files."""
    umask = os.umask(0o022)
    try:
        store.save_tensors(tmp_path, "stored.safetensors", {"x": torch.ones(2)})
        checkpoints.save(tmp_path / "checkpoint.safetensors", {"x": torch.ones(2)}, {"step": 1})
        (tmp_path / "plain.txt").write_text("")
    finally:
        os.umask(umask)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()}
    assert modes == {"stored.safetensors": 0o644, "checkpoint.safetensors": 0o644, "plain.txt": 0o644}
