"""Offline verbs over a folder of results, with the services' own cores and no broker or Redis.

- ``lithowatch dedupe DIR``: groups of duplicates (:mod:`app.offline.dedupe`), decided by the
  dedupe service's core over its in-memory store, so a folder and a stream get the same verdicts;
- ``lithowatch score DIR --library LIB``: the novelty of every result against a library
  (:mod:`app.offline.score`), through the align, embed and novelty cores the stream runs.

What a folder may hold is :mod:`app.offline.inputs`; the command line is :mod:`app.offline.cli`.
"""
