"""Deployment definitions (Docker, Kubernetes, ECS) and their offline checks.

- ``deploy.checks``: render the kustomize overlays and check them (kubernetes-validate, checkov), lint
  the Dockerfiles (hadolint, checkov); ``python -m deploy.checks`` runs them all.
- ``deploy.ecs.deploy``: validate the ECS task and service definitions, register and roll them out
  with boto3 (``python -m deploy.ecs.deploy --help``).
"""
