"""The embedded store in a process of its own, for the benchmark.

Runs `service.db.EmbeddedStore` with the memory engine in a temporary directory, prints its
wire URL on one line of stdout, then serves until it is terminated (SIGTERM or SIGINT), when
it stops the store and removes the directory. A process of its own on purpose: it plays the
part PostgreSQL plays for the reference figures, a database server that is not the API's
process, so the API's event loop does not also run the database.

    .venv/bin/python bench/store.py [--port 0]
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
    args = parser.parse_args()

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    directory = Path(tempfile.mkdtemp(prefix="bench-store-"))
    store = EmbeddedStore("memory", directory, args.port)
    try:
        print(store.start(), flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        store.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
