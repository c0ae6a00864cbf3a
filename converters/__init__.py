"""Convert checkpoints into validated, versioned entries of a Triton model repository, and serve them.

Run ``python -m converters --help`` for the commands.
"""
