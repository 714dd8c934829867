"""Record the current library sources in stored artifacts whose computation a change did not alter.

When code that defines an artifact is moved or reworded without changing what
it computes (a function moved to another module, a call renamed), the
artifact's status turns "stale: source changed in ...". After checking that
the change cannot alter the artifact (by reading it, or by rebuilding and
comparing bytes), this tool recomputes the artifact's source hashes and appends
a dated note to the "revisions" list of its meta.json, so that the history says
what changed and why nothing was recomputed. It refuses an artifact that is
missing, damaged or built from another config: those need a rebuild.

    python tools/restamp_artifacts.py --note "why nothing was recomputed" NAME [NAME ...]
"""

import argparse
import json
import time

from diffusion_lib import artifacts, store


def restamp(name, note):
    """Replace the artifact's source hashes with the current ones and log the note; returns the changed entries."""
    state, _ = artifacts.status(name)
    if not (state == "ok" or state.startswith("stale: source changed")):
        raise SystemExit(f"{name}: {state}; only an artifact whose sources alone changed can be restamped")
    experiment = artifacts.experiment(name)
    folder = store.root() / name
    meta = store.read_meta(folder)
    now = store.source_hashes(experiment.sources)
    changed = sorted(set(now.items()) ^ set(meta["source_hashes"].items()))
    meta["source_hashes"] = now
    meta["revisions"] = [*meta.get("revisions", []), f"{time.strftime('%Y-%m-%d')}: {note}"]
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return sorted({entry for entry, _ in changed})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+")
    parser.add_argument("--note", required=True, help="what changed in the sources and why nothing was recomputed")
    args = parser.parse_args(argv)
    for name in args.names:
        print(f"{name}: restamped; changed entries: {', '.join(restamp(name, args.note)) or 'none'}")


if __name__ == "__main__":
    main()
