"""Benchmarks: one command measures every serving stack of this project against its baselines.

``python -m benchmarks [--quick] [--out DIR]`` runs, on 127.0.0.1 and in one go, the in-process
ONNX Runtime ceiling, Triton direct (perf_analyzer, gRPC and HTTP, with the CPU time per item of the
server and of perf_analyzer), the Bento service (Locust) and a plain FastAPI app running the PyTorch
model eagerly (Locust), then writes ``summary.json``, ``report.md`` and plots.
``python -m benchmarks tune NAME --p99-ms X`` measures Triton's batching settings and writes a tuning
result, which ``python -m converters configure NAME --tuning FILE`` applies: benchmarks measure,
converters write.
"""
