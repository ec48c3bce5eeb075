"""The serving benchmark, ``serve.py``: ``lgm serve`` under Debian's ``wrk`` against the model's in-process
ceiling, a soak (``--soak``), and request formats and peer servers (``--protocols``).

- ``serve.py``: the command line, the load cells and the soak;
- ``protocols.py``: ``--protocols``: /v1, /v2 JSON, /v2 binary and gRPC against LitServe and MLServer;
- ``peers.py``: those peer servers, run in their own environment (``make .venv-peers``);
- ``common.py``: what ``serve.py`` and ``protocols.py`` both need (artifact, test images, ceiling, port);
- ``engines.py``: the two scoring engines (torch, onnxruntime) in process; its scorers give the ceilings of
  ``--engines``;
- ``paired.py``: servers up at once, their runs interleaved and paired (``--query-policies``, ``--engines``);
- ``wrk.py``: the load generator's side (its Lua script, one cell, the soak's sampling);
- ``loadgen.py``: ``--protocols``' load generators (wrk over any request format, h2load for gRPC);
- ``proctree.py``: CPU time and resident memory of a process and all its descendants (Linux ``/proc``);
- ``report.py``: the tables, printed by the benchmark and rendered on the results pages.
"""
