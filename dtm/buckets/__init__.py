"""Buckets: the protocol every storage engine implements, and the engines behind it.

A bucket is one shard of the keyspace with its own storage. This package will own the
bucket protocol (run commands on one bucket; prepare, commit, abort; capture or save at a
cut; scan; recover) with its theory, and its two engines: the embedded in-memory engine
and the redis engine, where each bucket is a redis-server that any number of dtm fronts
share. The redis engine's building blocks live here already: ``link`` (a pipelined
client connection to one shard, and a pool of dedicated connections) and ``spawn``
(starting, supervising and stopping one local redis-server per bucket).
"""
