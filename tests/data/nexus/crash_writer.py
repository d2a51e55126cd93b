"""Child process of the crash test: write frames with NexusWriter, report, and wait to be killed.

Usage: python crash_writer.py OUT_DIR N_FIRST N_MORE

Writes N_FIRST frames (raw run and its predictions, interleaved), prints ``ready <n> <path>``
and waits for a line on stdin; then writes N_MORE frames, prints ``ready <n> <path>`` again
and sleeps until the parent kills it with SIGKILL. The run never stops, so the file is never
closed: everything the parent reads afterwards was flushed frame by frame.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import nexus_runs as runs  # noqa: E402

from bluesky_callbacks.nexus_writer import NexusWriter  # noqa: E402


def main() -> None:
    out_dir, n_first, n_more = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    n = n_first + n_more
    raw = runs.raw_run(n, n_points=300)
    derived = runs.derived_run(raw, n)
    writer = NexusWriter(out_dir)
    for name, doc in [raw.start, *raw.head, derived.start, *derived.head]:
        writer(name, doc)
    path = writer.paths[raw.uid]
    for i in range(n):
        for name, doc in raw.frames[i] + derived.frames[i]:
            writer(name, doc)
        if i + 1 == n_first:
            print(f"ready {i + 1} {path}", flush=True)
            sys.stdin.readline()
    print(f"ready {n} {path}", flush=True)
    while True:  # never stop the run: the parent kills us
        time.sleep(1)


if __name__ == "__main__":
    main()
