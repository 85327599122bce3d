#!/usr/bin/env python3
"""P: the hand-written Python consumer of the Sluice benchmark.

The same batched loop as L (bench/src/limit.rs), with the same flags:
per consumer thread, two round trips per batch:

    [XACK previous batch, XREADGROUP COUNT batch BLOCK ms]   (one pipeline)
    uppercase the payload field
    [XADD x batch]                                           (one pipeline)

A batch is acked only after its writes were confirmed (its XACK rides with
the next read). SIGTERM: finish the batch, flush the last ack, exit 0.
Needs redis-py (`pip install redis`).
"""

import argparse
import os
import signal
import sys
import threading

import redis

FIELD = b"payload"


def consume(url, source, sink, group, consumer, batch, block_ms, stop, errors):
    try:
        r = redis.Redis.from_url(url)
        unacked = []
        while True:
            stopping = stop.is_set()
            pipe = r.pipeline(transaction=False)
            if unacked:
                pipe.xack(source, group, *unacked)
            if stopping:
                if unacked:
                    pipe.execute()
                return
            pipe.xreadgroup(group, consumer, {source: ">"}, count=batch, block=block_ms)
            reply = pipe.execute()[-1]
            unacked = []
            if not reply:
                continue
            write = r.pipeline(transaction=False)
            for entry_id, fields in reply[0][1]:
                if FIELD in fields:
                    fields[FIELD] = fields[FIELD].upper()
                write.xadd(sink, fields)
                unacked.append(entry_id)
            if unacked:
                write.execute()
    except Exception as e:  # reported by the main thread; the bench sees exit 1
        errors.append(f"{consumer}: {e!r}")
        stop.set()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", required=True)
    ap.add_argument("--source-prefix", required=True)
    ap.add_argument("--sink-prefix", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--pipelines", type=int, default=1)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--block-ms", type=int, default=100)
    a = ap.parse_args()

    stop = threading.Event()
    errors = []
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = []
    for p in range(a.pipelines):
        for c in range(a.consumers):
            t = threading.Thread(
                target=consume,
                args=(
                    a.redis,
                    f"{a.source_prefix}:{p}",
                    f"{a.sink_prefix}:{p}",
                    a.group,
                    f"python-{os.getpid()}-{p}-{c}",
                    a.batch,
                    a.block_ms,
                    stop,
                    errors,
                ),
            )
            t.start()
            threads.append(t)
    # The main thread only waits, so it can run the SIGTERM handler promptly.
    while not stop.wait(0.1):
        pass
    for t in threads:
        t.join()
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
