"""What every stage reads: errors, the task registry, the model repository, config.pbtxt.

The converters write with it, the local Triton serves what it describes, the BentoML service reads it
(the bento ships this package whole), the benchmarks and deploy tools check against it.
"""
