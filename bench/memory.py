"""Memory for N small keys: load key:0..N-1 = 'xxx' into a server, report its RSS growth.

    python -m bench.memory PORT [--keys 1000000]

Run against dtm and a redis-server (both freshly started) to compare.
"""

from __future__ import annotations

import argparse

import redis


def rss(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory_rss"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    client = redis.Redis(port=args.port)
    client.flushall()
    before = rss(client)
    chunk = 1000
    pipe = client.pipeline(transaction=False)
    for start in range(0, args.keys, chunk):
        pipe.execute_command("MSET", *[x for i in range(start, min(start + chunk, args.keys))
                                       for x in (f"key:{i:012d}", "xxx")])
        if start % (chunk * 50) == 0:
            pipe.execute()
    pipe.execute()
    assert client.dbsize() == args.keys
    after = rss(client)
    print(f"port {args.port}: {args.keys} keys, RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB, "
          f"{(after - before) / args.keys:.0f} bytes/key")


if __name__ == "__main__":
    main()
