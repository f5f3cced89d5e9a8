"""dtm: a Redis-compatible server on Trio with ACID transactions across buckets."""

__version__ = "0.1.0"
# What INFO reports as redis_version: the Redis release whose commands and replies dtm follows.
REDIS_COMPAT_VERSION = "7.0.15"
