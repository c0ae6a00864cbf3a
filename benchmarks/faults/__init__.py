"""The fault suite: ``python -m benchmarks faults [--quick]`` does to a running stack what a hostile
user and a bad day would, and writes what happened to ``faults.json`` (and ``faults.md``).

On its own Triton and Bento, over a copy of the model repository (hard links, so nothing is copied
twice and the original is never touched), in this order:

- ``publish_kills``: publishes SIGKILLed at each of ``core.repository.HOOK_POINTS``, with and without a
  config change, in a scratch copy: the repository must be byte-identical after each kill;
- ``bad_inputs``: a matrix of malformed requests, each with the status it must get;
- ``fuzz``: a bounded schemathesis run of the service's own OpenAPI schema (by count and by time,
  127.0.0.1 only): 5xx answers and crashes counted from the service's own metrics and processes;
- ``metrics``: ``/metrics`` before and after many requests for unknown paths;
- ``blocking``: ``/healthz`` latency while the largest request the limits allow is decoded;
- ``swaps``: versions published, rolled back and loaded under load, without restarting the Bento;
- ``triton_kill`` and ``triton_stop``: Triton SIGKILLed, then SIGSTOPped, under load: time to the
  first 503, hung and lost requests, wrong answers, recovery without a restart.

Every section reports its figures; ``goals`` states each goal of issue 15 as met or not with its figure.
The goals are reported, never asserted as timings in a test (tests check that the suite measures).
"""
