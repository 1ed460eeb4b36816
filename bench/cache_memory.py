#!/usr/bin/env python3
"""Memory of the in-process version cache (issue 6: <= 150 MB RSS per worker with 1,000,000
keys known).

Creates a database ``reality_bench_<hex>`` on PostgreSQL (``--database-url``, default the
local server), fills ``reality_versions`` with ``--keys`` keys (``user:profile:<n>``, versions
1..100) plus 5,000 unfolded log rows, then loads a :class:`reality_core.VersionCache` in a
fresh child process and reports that process's RSS before and after the load, the load time,
and the time to answer one 100-key sync from memory. The database is dropped at the end.

    python bench/cache_memory.py                 # 1,000,000 keys
    python bench/cache_memory.py --keys 100000   # quicker

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
from reality_core import DBAPIReader, SyncService, VersionCache
url = sys.argv[1]
before = rss_mb()
cache = VersionCache(DBAPIReader.from_url(url), interval=0.05)
began = time.perf_counter()
assert cache.wait_ready(600), "cache did not load"
load_s = time.perf_counter() - began
time.sleep(0.5)  # a few refreshes on top of the load
after = rss_mb()
service = SyncService(cache)
known = {f"user:profile:{n}": 1 for n in range(1, 200001, 2000)}
body = json.dumps({"known": known}).encode()
timings = []
for _ in range(2000):
    t = time.perf_counter()
    response = service.handle_now(body, "application/json")
    timings.append(time.perf_counter() - t)
assert response is not None and response.status == 200, response
timings.sort()
print(json.dumps({"rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
                  "peak_rss_mb": round(
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "load_s": round(load_s, 2),
                  "sync_100_keys_median_us": round(timings[len(timings) // 2] * 1e6, 1)}))
cache.close()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()

    import psycopg

    from reality_core.store import create_table_statements, insert_epoch_statement

    name = f"reality_bench_{secrets.token_hex(4)}"
    admin = psycopg.connect(args.database_url, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    url = args.database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in create_table_statements("postgresql"):
                conn.execute(statement)
            conn.execute(*insert_epoch_statement("postgresql", "format"))
            began = time.perf_counter()
            conn.execute(
                "INSERT INTO reality_versions (key_name, version, hash, updated_at, fold_seq) "
                "SELECT 'user:profile:' || g, g %% 100 + 1, '', 1796000000000 + g, 0 "
                "FROM generate_series(1, %s) AS g", (args.keys,))
            conn.execute(
                "INSERT INTO reality_log (key_name, created_at) "
                "SELECT 'user:profile:' || (g * 7), 1796000000000 FROM generate_series(1, 5000) g")
            conn.execute("VACUUM ANALYZE reality_versions")
            print(f"filled {args.keys:,} keys in {time.perf_counter() - began:.1f} s",
                  file=sys.stderr)
        out = subprocess.run([sys.executable, "-c", CHILD, url], check=True,
                             capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    goal = result["rss_after_mb"] <= 150
    print(f"keys {args.keys:,}: RSS {result['rss_before_mb']} MB before, "
          f"{result['rss_after_mb']} MB after loading (peak {result['peak_rss_mb']} MB; "
          f"goal <= 150 MB: {'met' if goal else 'MISSED'}); load {result['load_s']} s; "
          f"one 100-key sync from memory: median {result['sync_100_keys_median_us']} us")
    print(json.dumps({"bench": "cache_memory", "keys": args.keys, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
