#!/usr/bin/env python3
"""Overload probe of bench/sync_load.py: a closed-loop HTTP/1.1 client on raw asyncio streams.

    python overload_client.py --host 127.0.0.1 --port P --path /reality/sync \\
        --bodies FILE --connections 8 --duration 5 [--interval 0.005]

Runs in a process of its own (beside wrk, which supplies the bulk of the load) and records,
for every response, its status and latency (request written -> whole response read), so the
latency of shed (503/429) and admitted (200) answers can be told apart, which wrk cannot do.
Every shed answer is checked for a ``Retry-After`` header and an
``application/problem+json`` body with the fields ``type`` and ``status``. Keep-alive
connections; a connection the server closes is reopened. With ``--interval`` each connection
waits a random time (exponential, that mean) before each request, as a client with think time
does; the clock of a request starts when it is written. Prints one JSON line (latencies
in ms). Stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHED = (429, 503)


@dataclass(slots=True)
class Record:
    latencies: dict[int, list[float]] = field(default_factory=dict)  # status -> seconds
    retry_after_missing: int = 0
    not_problem_json: int = 0
    bad_problem_body: int = 0
    errors: int = 0
    reconnects: int = 0
    sample_shed: dict[str, Any] | None = None

    def add(self, status: int, latency: float) -> None:
        self.latencies.setdefault(status, []).append(latency)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"count": len(ordered), "p50_ms": round(percentile(ordered, 50) * 1000, 3),
            "p99_ms": round(percentile(ordered, 99) * 1000, 3),
            "max_ms": round(ordered[-1] * 1000, 3)}


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


def check_shed(rec: Record, headers: dict[str, str], body: bytes) -> None:
    if "retry-after" not in headers:
        rec.retry_after_missing += 1
    if not headers.get("content-type", "").startswith("application/problem+json"):
        rec.not_problem_json += 1
    try:
        doc = json.loads(body)
        ok = isinstance(doc, dict) and "type" in doc and "status" in doc
    except ValueError:
        ok = False
    if not ok:
        rec.bad_problem_body += 1
    if rec.sample_shed is None:
        rec.sample_shed = {"headers": headers, "body": body.decode("utf-8", "replace")[:400]}


async def connection(host: str, port: int, requests: list[bytes], offset: int,
                     deadline: float, rec: Record, interval: float) -> None:
    clock = time.perf_counter
    rng = random.Random(offset)
    i = offset
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while clock() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            request = requests[i % len(requests)]
            i += 1
            if interval > 0:
                await asyncio.sleep(rng.expovariate(1 / interval))
            t0 = clock()
            writer.write(request)
            status, headers, body = await read_response(reader)
            rec.add(status, clock() - t0)
            if status in SHED:
                check_shed(rec, headers, body)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                writer = None
                rec.reconnects += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            rec.errors += 1
            if writer is not None:
                writer.close()
            writer = None
            rec.reconnects += 1
            await asyncio.sleep(0.001)
    if writer is not None:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bodies = [line for line in Path(args.bodies).read_bytes().splitlines() if line.strip()]
    requests = [
        (f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
         f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n\r\n").encode() + b
        for b in bodies
    ]
    rec = Record()
    start = time.perf_counter()
    deadline = start + args.duration
    await asyncio.gather(*(connection(args.host, args.port, requests, n, deadline, rec,
                                      args.interval)
                           for n in range(args.connections)))
    elapsed = time.perf_counter() - start
    shed = [x for s in SHED for x in rec.latencies.get(s, [])]
    total = sum(len(v) for v in rec.latencies.values())
    return {
        "requests": total,
        "elapsed_s": round(elapsed, 3),
        "by_status": {str(k): len(v) for k, v in sorted(rec.latencies.items())},
        "shed": summary(shed),
        "admitted": summary(rec.latencies.get(200, [])),
        "retry_after_missing": rec.retry_after_missing,
        "not_problem_json": rec.not_problem_json,
        "bad_problem_body": rec.bad_problem_body,
        "errors": rec.errors,
        "reconnects": rec.reconnects,
        "sample_shed": rec.sample_shed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/reality/sync")
    parser.add_argument("--bodies", required=True, help="one JSON body per line")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.0,
                        help="mean think time per connection, s (default 0: closed loop)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
