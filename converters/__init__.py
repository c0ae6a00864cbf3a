"""Convert checkpoints into validated, versioned entries of a Triton model repository.

Run ``python -m converters --help`` for the commands. The same command line also carries the local
Triton's verbs (``serve``, ``status``, ``load``, ``unload``), which live in ``local_triton/``.
"""
