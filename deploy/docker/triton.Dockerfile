# Production Triton image: NVIDIA's Triton 2.51 container (release 24.10), serving the model repository
# at /models with the native ONNX Runtime backend (and its TensorRT accelerator on a GPU), the python
# backend (the text entries' NAME_tokenizer models) and the ensemble scheduler (NAME_text).
#
# No model is baked in: models take one path, the release (docs/deploy.md, step 1). Kubernetes and ECS
# download the release their configuration names into /models before Triton starts, so one image serves
# every release, and a release changes without a new image. Build (nothing of the repository is sent:
# deploy/docker/triton.Dockerfile.dockerignore excludes everything):
#   DOCKER_BUILDKIT=1 docker build -f deploy/docker/triton.Dockerfile -t modelpack-triton:0.1.0 .
# To pin the base by digest as well as by tag, look it up once and replace the FROM line with
#   FROM nvcr.io/nvidia/tritonserver:24.10-py3@sha256:<digest from `docker buildx imagetools inspect`>
FROM nvcr.io/nvidia/tritonserver:24.10-py3

LABEL org.opencontainers.image.title="modelpack-triton" \
      org.opencontainers.image.description="Triton 2.51 serving the modelpack model repository"

# The NAME_tokenizer models import `tokenizers` (the version local_triton/backends/requirements.txt pins
# for the local server); they never use its dependency huggingface-hub, so the wheel alone is installed.
RUN python3 -m pip install --no-cache-dir --no-deps tokenizers==0.23.3

# The base image ships the unprivileged user triton-server with uid and gid 1000; /models is where the
# release is mounted.
USER 1000:1000
WORKDIR /models

# 8000 HTTP (KServe v2, health), 8001 gRPC, 8002 Prometheus metrics.
EXPOSE 8000 8001 8002

# Ready only when every loaded model is ready (strict readiness is Triton's default).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "4", "http://127.0.0.1:8000/v2/health/ready"]

ENTRYPOINT ["tritonserver"]
# --exit-timeout-secs: on SIGTERM, how long the calls in flight may take (the deployments' grace periods
# are sized on it).
CMD ["--model-repository=/models", "--model-control-mode=explicit", "--load-model=*", \
     "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--exit-on-error=true", \
     "--exit-timeout-secs=30"]
