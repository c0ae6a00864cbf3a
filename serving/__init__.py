"""The BentoML service's machinery; ``service.py`` at the root is the service class and its endpoints.

- ``requests``: the one request path every endpoint calls (model, version, pre, Triton, post, answer)
- ``tasks``: pre-processing per input kind, post-processing per task, replies per route, by the names
  the task registry (``core/tasks.py``) gives
- ``settings``: ``service.yaml`` (unknown keys refused); ``models``: the configured models' served
  versions and the version choice (canary split); ``live``: those kept in step with the repository and
  Triton while the service runs; ``preprocess``: tokenizer and image pipelines
- ``triton_client``: the async gRPC client, request merging and chunking, Triton's failures told apart;
  ``http``: request ids, JSON bodies only, body limits, unknown paths, strict integers, bounded metrics
  labels (``GuardedService``), error shapes and request checks; ``observability``: metrics and JSON logs
- ``launcher``: ``bentoml serve`` as a child process, ready when it returns (tests, benchmarks)

Only ``core/`` and the packages of requirements-service.txt are imported here: the bento ships this
package and ``core/``, nothing else of the repository.
"""
