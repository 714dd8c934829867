"""Each chapter's execution time, as the book's execution cache recorded it, against the execution budget.

A chapter may execute for at most 60 s on a two-core CPU at the default number
of threads (90 s with one thread), and the whole book for at most 8 minutes;
what costs more belongs in an artifact (book/extending.md). The times are those
of each chapter's latest execution, so after a build that took some chapters
from the cache they may come from different builds.

    python benchmarks/book_execution.py [--cache book/_build/.jupyter_cache] [--threads N]
"""

import argparse
import os
from pathlib import Path

from jupyter_cache import get_cache

CHAPTER_BUDGET = {1: 90.0, None: 60.0}  # seconds, by thread count (None: the default, both cores)
BOOK_BUDGET = 480.0


def latest_times(cache_folder):
    """{chapter file name: seconds} of the latest cached execution of each chapter."""
    latest = {}
    for record in get_cache(str(cache_folder)).list_cache_records():
        name = Path(record.uri).name
        if name not in latest or record.created > latest[name][0]:
            latest[name] = (record.created, record.data.get("execution_seconds"))
    return {name: seconds for name, (_, seconds) in latest.items() if seconds is not None}


def report(times, chapter_budget, book_budget):
    """The lines of the table, slowest chapter first, and the total; marks what is over its budget."""
    width = max(map(len, times), default=10)
    lines = [f"{'chapter':{width}s}  seconds  (budget {chapter_budget:.0f} s each, {book_budget:.0f} s in all)"]
    for name, seconds in sorted(times.items(), key=lambda item: -item[1]):
        lines.append(f"{name:{width}s}  {seconds:7.1f}" + ("  OVER BUDGET" if seconds > chapter_budget else ""))
    total = sum(times.values())
    lines.append(f"{'total':{width}s}  {total:7.1f}" + ("  OVER BUDGET" if total > book_budget else ""))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("book/_build/.jupyter_cache"))
    threads_help = "the thread count the chapters ran with (default: $OMP_NUM_THREADS, else both cores)"
    parser.add_argument("--threads", type=int, default=os.environ.get("OMP_NUM_THREADS"), help=threads_help)
    args = parser.parse_args(argv)
    if not args.cache.is_dir():
        raise SystemExit(f"no execution cache at {args.cache}: build the book first (make book)")
    budget = CHAPTER_BUDGET[1] if args.threads == 1 else CHAPTER_BUDGET[None]
    print("\n".join(report(latest_times(args.cache), budget, BOOK_BUDGET)))


if __name__ == "__main__":
    main()
