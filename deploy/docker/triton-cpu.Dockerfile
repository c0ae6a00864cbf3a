# CPU Triton image: Triton 2.51.0 from the same nvidia-pytriton 0.7.0 wheel the local set-up uses, with
# this project's python-based onnxruntime backend and its numpy<2 venv, installed by
# local_triton/setup.sh itself (sha256-checked wheel). For CPU-only clusters (Kubernetes overlays
# cpu and canary, the ECS Fargate task) and the container test. The GPU image stays on NVIDIA's base:
# deploy/docker/triton.Dockerfile.
#
# Build it with `make images` (python -m deploy.images build): the build context is a folder the
# driver stages with exactly what the image gets (local_triton/, core/__init__.py, core/errors.py and
# the pinned wheel as .cache/wheels/<wheel>), then
#   podman build --format docker -f deploy/docker/triton-cpu.Dockerfile \
#     --build-arg BASE_IMAGE=<base> -v <CA bundle>:/etc/ssl/certs/ca-certificates.crt:ro <context>
# The CA bundle mount lets pip and apt-get reach the package registry through a TLS-inspecting proxy.
# BASE_IMAGE: python:3.11-slim-bookworm where it can be pulled, else the Debian base the driver builds
# with debootstrap (localhost/modelpack-base:bookworm). Either way Python 3.11, which decides the
# python backend stub setup.sh installs.
#
# The model repository is not baked in: clusters sync it into /models and mount it there read-only.
#
# checkov:skip=CKV_DOCKER_7:The base is the build argument BASE_IMAGE, pinned to the python:3.11-slim-bookworm tag by default and to a locally built, labelled image otherwise; checkov cannot see through the variable
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /opt/modelpack
# Only what setup.sh needs, so that a change to the Python sources below does not re-run it. The wheel
# is already in .cache/wheels: setup.sh checks its sha256 and downloads nothing; the backend venv comes
# from local_triton/backends/requirements.txt. The cache stays in this stage.
COPY local_triton/setup.sh local_triton/setup.sh
COPY local_triton/backends/requirements.txt local_triton/backends/requirements.txt
COPY .cache/wheels/ .cache/wheels/
RUN bash local_triton/setup.sh --server-only python3

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="modelpack-triton-cpu" \
      org.opencontainers.image.description="Triton 2.51 on CPU, serving the modelpack model repository through python-based ONNX Runtime"

# curl for the health check, the same command as the GPU image's and the ECS task's. The uid/gid 1000
# user has NVIDIA's image's name and ids, so the manifests' runAsUser fits both images.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --no-create-home --no-log-init --home-dir /opt/modelpack triton-server \
    && install -d -o 1000 -g 1000 /models

# tritonserver, its libraries and backends (.triton/backends/onnxruntime/model.py links to
# local_triton/backends/onnxruntime/model.py), the backend venv; then the sources, owned by root.
COPY --from=build /opt/modelpack/.triton /opt/modelpack/.triton
COPY --from=build /opt/modelpack/.venv-triton /opt/modelpack/.venv-triton
COPY local_triton/ /opt/modelpack/local_triton/
COPY core/ /opt/modelpack/core/

# local_triton.entrypoint is stdlib + core.errors; the server itself gets Installation.environment(),
# which drops PYTHONPATH.
ENV PYTHONPATH=/opt/modelpack \
    PYTHONDONTWRITEBYTECODE=1

USER 1000:1000
WORKDIR /models

# 8000 HTTP (KServe v2, health), 8001 gRPC, 8002 Prometheus metrics.
EXPOSE 8000 8001 8002

# Ready only when every loaded model is ready (strict readiness is Triton's default).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "4", "http://127.0.0.1:8000/v2/health/ready"]

ENTRYPOINT ["python3", "-m", "local_triton.entrypoint"]
# The same command as NVIDIA's image (deploy/docker/triton.Dockerfile), so the Deployments' args fit both.
CMD ["--model-repository=/models", "--model-control-mode=explicit", "--load-model=*", \
     "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--exit-on-error=true", \
     "--exit-timeout-secs=30"]
