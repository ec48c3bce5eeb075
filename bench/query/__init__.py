"""Query attacks: black-box attackers who reach the model only through ``lgm serve``'s HTTP API, against the
stateful defence (docs/query-attacks.md).

- ``attacks.py``: the benchmark: Square, HopSkipJump and the attackers who know the defence, benign traffic,
  the threshold sweep;
- ``attackers.py``: the attacks themselves; ``oracle.py``: the running server as the attackers see it;
- ``report.py``: the tables, printed by the benchmark and rendered on the results pages;
- ``fingerprints.py``: which fingerprint tells an attack's near-duplicate queries from distinct digits,
  offline.
"""
