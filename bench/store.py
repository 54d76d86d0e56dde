"""The embedded store in a process of its own, for the benchmark.

Runs `devstore.EmbeddedStore` on DATA_DIR's SQLite file (the default engine; `--storage
memory` for the memory engine in a temporary directory), prints its wire URL on one line of
stdout, then serves until it is terminated (SIGTERM or SIGINT), when it stops the store. A
process of its own on purpose: a database server that is not the API's process, so that the
API's CPU time per request is the API's alone.

    .venv/bin/python bench/store.py --data-dir DIR [--storage sqlite] [--port 0]
"""

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from devstore import EmbeddedStore


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: a free one)")
    parser.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--data-dir", type=Path, help="the store's directory (kept)")
    args = parser.parse_args()

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    directory = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-store-"))
    store = EmbeddedStore(args.storage, directory, args.port)
    try:
        print(store.start(), flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        store.stop()
        if args.data_dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
