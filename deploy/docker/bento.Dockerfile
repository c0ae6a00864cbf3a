# Bento image, last step: the image `bentoml containerize --backend podman` built from the bento
# (BentoML's own Dockerfile template, untouched), plus what that template has no option for: a
# HEALTHCHECK, and the folders BentoML creates at start-up, so that the image runs with a read-only
# root filesystem as the Kubernetes pod runs it. `make images` (python -m deploy.images build) runs
# both steps and labels the result with the versions:
#   bentoml containerize --backend podman -t localhost/modelpack-bento:0.1.0-bentoml modelpack:<version>
#   podman build --format docker -f deploy/docker/bento.Dockerfile \
#     --build-arg BENTO_IMAGE=localhost/modelpack-bento:0.1.0-bentoml -t localhost/modelpack-bento:0.1.0 deploy/docker
# (A bentofile `docker.dockerfile_template` extending BentoML's template would be the in-template way,
# but `bentoml containerize` 1.4 refuses any template unless run from its temporary build folder:
# BentoML issue #5566.) Docker format: OCI images drop HEALTHCHECK.
#
# checkov:skip=CKV_DOCKER_7:The base is the build argument BENTO_IMAGE, the image bentoml containerize has just built under a version tag; checkov cannot see through the variable
ARG BENTO_IMAGE=localhost/modelpack-bento:0.1.0-bentoml
FROM ${BENTO_IMAGE}

# Healthy means ready: the service answers, and Triton and every routed model version are ready
# (GET /readyz, what the ECS task and the Kubernetes readiness probe ask). The bento's own venv Python
# asks, so the check needs no curl in the base image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)"]

# BentoML's template already ends as its user bentoml (uid and gid 1034, owner of /home/bentoml).
USER 1034:1034

# `bentoml serve` makes sure its store folders exist under BENTOML_HOME (/home/bentoml) before it
# serves, and fails on a read-only root filesystem when they are missing (they stay empty: the bento
# is served from /home/bentoml/bento). The writable paths it does use are mounted in the pod:
# /home/bentoml/prometheus_multiproc_dir and /tmp.
RUN mkdir -p /home/bentoml/bentos /home/bentoml/models /home/bentoml/envs /home/bentoml/tmp
