"""Register the modelpack task definition on ECS, roll the service onto it (boto3) and wait until that
deployment is done, idempotently.

    python -m deploy.ecs.deploy --var TRITON_IMAGE=... --var BENTO_IMAGE=... [--variant gpu] [--dry-run]

Steps: read ``task-definition.json`` and ``service.json`` beside this file, apply variants
(``variants/<name>.json``, in the order given: top-level keys replace, ``null`` removes, ``containers``
patches containers by name), fill in the ``${NAME}`` variables (``--var NAME=VALUE`` or the
environment; an array item that is exactly ``${NAME}`` takes the comma-separated items of its value),
validate both definitions (``deploy.ecs.checks``) before any AWS call, then plan:

- the task definition: the latest ACTIVE revision of the family carries the sha256 of the rendered
  definition in its tag ``modelpack:definition-sha256``; same hash -> no new revision;
- the service: missing -> create it; else every key of service.json is compared with what ECS reports:
  a key UpdateService takes (ECS's API model says which) that differs -> update, sent with the call;
  a key only CreateService takes (launchType, schedulingStrategy, role) that differs -> an error naming
  how to change it; ``desiredCount`` is left to Application Auto Scaling. Keys ECS does not report back
  cannot be compared and are listed in the plan as such.

Then it waits for the deployment it started (``--wait-timeout``, default 30 minutes): the new service
deployment's own status (DescribeServiceDeployments) where ECS reports one, else the new PRIMARY
deployment's ``rolloutState``. COMPLETED/SUCCESSFUL is success; FAILED, a rollback (the circuit breaker
or an alarm) or a stop is an error naming ECS's reason and the revision ECS went back to. ``aws ecs wait
services-stable`` is no substitute: it reports success once a rollback has made the service stable.

``--dry-run`` prints the plan and changes nothing (it still reads the current state); ``--validate-only``
renders and validates without calling AWS. A service whose deployment controller is CODE_DEPLOY
(blue/green through CodeDeploy) cannot be updated here: ECS refuses the call, so the script says to
start a CodeDeploy deployment instead (docs/deploy.md). ECS's own canary (``--variant canary``:
deploymentConfiguration strategy CANARY) is an ordinary update and is waited for like a rolling one.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python deploy/ecs/deploy.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.errors import (
    InvalidArgument,
    MissingDependency,
    NotFound,
    PublishError,
    ToolkitError,
    Unavailable,
)
from deploy.ecs.checks import check_definitions

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TASK_DEFINITION = HERE / "task-definition.json"
SERVICE = HERE / "service.json"
VARIANTS = HERE / "variants"
HASH_TAG = "modelpack:definition-sha256"
VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
# service.json keys that name the service rather than configure it, and the one left to autoscaling.
IDENTITY = ("serviceName", "cluster")
AUTOSCALED = ("desiredCount",)
# How to change what UpdateService cannot.
RECREATE = {
    "launchType": "UpdateService cannot change the launch type: delete and create the service again, or "
    "use a capacityProviderStrategy (which UpdateService can change) instead of launchType",
    "schedulingStrategy": "UpdateService cannot change the scheduling strategy: create the service again",
    "role": "UpdateService cannot change the service's IAM role: create the service again",
    "tags": "tags are not part of a deployment: change them with `aws ecs tag-resource`",
}
# A service deployment's statuses (DescribeServiceDeployments) that end a deploy as failed.
FAILED_STATUSES = ("STOPPED", "STOP_REQUESTED", "ROLLBACK_REQUESTED", "ROLLBACK_IN_PROGRESS")
FAILED_STATUSES += ("ROLLBACK_SUCCESSFUL", "ROLLBACK_FAILED")
DEFAULT_WAIT_S = 1800.0


@dataclass
class Definitions:
    task: dict
    service: dict
    variant: str | None = None


@dataclass
class Plan:
    """What a deploy does (or did): the task definition revision and the service action."""

    cluster: str
    service: str
    family: str
    definition_sha256: str
    register: bool  # a new task definition revision
    task_definition_arn: str | None  # the revision the service ends on (None: the one to register)
    service_action: str  # "create" | "update" | "none"
    reasons: list[str] = field(default_factory=list)
    dry_run: bool = False
    not_compared: list[str] = field(default_factory=list)  # keys ECS did not report back
    updates: list[str] = field(default_factory=list)  # service.json keys sent with UpdateService
    rollout: dict | None = None  # the deployment waited for: its id/ARN, final state and reason

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- reading and rendering -----------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise NotFound(f"{path}: no such file", field=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"{path}: not valid JSON: {err}", field=str(path)) from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: expected a JSON object, got {type(data).__name__}", field=str(path))
    return data


def _merge(target: dict, patch: dict) -> dict:
    """Shallow merge: keys in ``patch`` replace those in ``target``; a null value removes the key."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_variant(task: dict, service: dict, variant: dict, *, source: str) -> tuple[dict, dict]:
    unknown = sorted(set(variant) - {"description", "taskDefinition", "service"})
    if unknown:
        raise InvalidArgument(
            f"{source}: unknown keys {unknown}; a variant has 'description', 'taskDefinition', 'service'",
            field="variant",
        )
    task_patch = dict(variant.get("taskDefinition") or {})
    container_patches = task_patch.pop("containers", {}) or {}
    task = _merge(task, task_patch)
    containers = task.get("containerDefinitions") or []
    names = [c.get("name") for c in containers]
    for name in container_patches:
        if name not in names:
            raise InvalidArgument(
                f"{source}: taskDefinition.containers.{name}: no such container (the task has {names})",
                field="variant",
            )
    task["containerDefinitions"] = [
        _merge(c, container_patches[c.get("name")]) if c.get("name") in container_patches else c
        for c in containers
    ]
    return task, _merge(service, variant.get("service") or {})


def _fill(template: Any, variables: dict[str, str], where: str, missing: dict[str, list[str]]) -> Any:
    if isinstance(template, dict):
        return {k: _fill(v, variables, f"{where}.{k}" if where else k, missing) for k, v in template.items()}
    if isinstance(template, list):
        items: list[Any] = []
        for index, item in enumerate(template):
            whole = VARIABLE.fullmatch(item) if isinstance(item, str) else None
            if whole and whole.group(1) in variables:
                items.extend(part.strip() for part in variables[whole.group(1)].split(",") if part.strip())
            else:
                items.append(_fill(item, variables, f"{where}[{index}]", missing))
        return items
    if isinstance(template, str):
        for name in VARIABLE.findall(template):
            if name not in variables:
                missing.setdefault(name, []).append(where)
        return VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), template)
    return template


def render(templates: dict[str, Any], variables: dict[str, str]) -> dict[str, Any]:
    """Fill ``${NAME}`` in every string of each template (keyed by its file name); raise one error
    naming every unset variable and where it is used."""
    missing: dict[str, list[str]] = {}
    rendered: dict[str, Any] = {}
    for source, template in templates.items():
        places: dict[str, list[str]] = {}
        rendered[source] = _fill(template, variables, "", places)
        for name, where in places.items():
            missing.setdefault(name, []).extend(f"{source}: {w}" for w in where)
    if missing:
        lines = [f"- {name} (used at {'; '.join(places)})" for name, places in sorted(missing.items())]
        raise InvalidArgument(
            f"{len(missing)} variable(s) not set:\n"
            + "\n".join(lines)
            + "\npass --var NAME=VALUE or set the environment variable",
            field=sorted(missing)[0],
        )
    return rendered


def load_definitions(
    variables: dict[str, str],
    *,
    variant: str | list[str] | None = None,
    task_path: Path = TASK_DEFINITION,
    service_path: Path = SERVICE,
) -> Definitions:
    """Read, apply the variants (in order), render and validate. No AWS call."""
    task, service = _read_json(task_path), _read_json(service_path)
    variants = [variant] if isinstance(variant, str) else list(variant or [])
    for name in variants:
        variant_path = VARIANTS / f"{name}.json"
        if not variant_path.is_file():
            known = sorted(p.stem for p in VARIANTS.glob("*.json"))
            raise NotFound(f"--variant: no variant {name!r} (known: {', '.join(known)})", field="variant")
        task, service = apply_variant(task, service, _read_json(variant_path), source=str(variant_path))
    release = variables.get("MODEL_RELEASE")
    if release is not None and not re.fullmatch(r"[0-9a-f]{64}", release):
        raise InvalidArgument(
            f"MODEL_RELEASE: {release!r} is not a release digest (64 hex digits); "
            "`python -m deploy.release digest DIR` prints the digest of an exported release",
            field="MODEL_RELEASE",
        )
    variant = ", ".join(variants) or None
    rendered = render({task_path.name: task, service_path.name: service}, variables)
    task, service = rendered[task_path.name], rendered[service_path.name]
    check_definitions(
        task, service, source=f"{task_path.name} + {service_path.name}" + (f" ({variant})" if variant else "")
    )
    return Definitions(task=task, service=service, variant=variant)


def definition_sha256(task: dict) -> str:
    return hashlib.sha256(json.dumps(task, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---- planning and applying -----------------------------------------------------------------------


def _client_error_code(err: Exception) -> str:
    return getattr(err, "response", {}).get("Error", {}).get("Code", "") if hasattr(err, "response") else ""


def _latest_revision(ecs, family: str) -> tuple[str | None, str | None]:
    """(ARN, definition hash tag) of the family's latest ACTIVE revision, or (None, None)."""
    from botocore.exceptions import ClientError

    try:
        answer = ecs.describe_task_definition(taskDefinition=family, include=["TAGS"])
    except ClientError as err:
        if _client_error_code(err) in ("ClientException", "InvalidParameterException"):
            return None, None  # no revision of this family yet
        raise
    tags = {t.get("key"): t.get("value") for t in answer.get("tags") or []}
    return answer["taskDefinition"]["taskDefinitionArn"], tags.get(HASH_TAG)


def _current_service(ecs, cluster: str, name: str) -> dict | None:
    answer = ecs.describe_services(cluster=cluster, services=[name])
    for service in answer.get("services") or []:
        if service.get("serviceName") == name and service.get("status") != "INACTIVE":
            return service
    return None


def _same(have: Any, want: Any) -> bool:
    """Whether ECS's ``have`` already is what service.json wants: dicts by the keys service.json gives
    (ECS reports defaults for the others), lists in any order, numbers by value."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_same(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return False
        unmatched = list(have)
        for item in want:
            match = next((i for i, h in enumerate(unmatched) if _same(h, item)), None)
            if match is None:
                return False
            unmatched.pop(match)
        return True
    if isinstance(want, (int, float)) and isinstance(have, (int, float)) and not isinstance(want, bool):
        return float(have) == float(want)
    return have == want


def _update_keys() -> set[str]:
    """The keys UpdateService takes, from botocore's model of the ECS API in use."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("ecs")
    return set(model.operation_model("UpdateService").input_shape.members)


def _differences(current: dict, wanted: dict) -> tuple[list[str], list[str], list[str]]:
    """(changes, keys to send with UpdateService, keys ECS did not report back): every key of the
    rendered service.json, compared; InvalidArgument for a change UpdateService cannot make."""
    updatable = _update_keys() - {"cluster", "service", "taskDefinition", "forceNewDeployment"}
    changes, updates, not_compared = [], [], []
    for key in sorted(wanted):
        if key in IDENTITY or key in AUTOSCALED:
            continue
        want = wanted[key]
        if key not in current:
            not_compared.append(key)
            continue
        if _same(current[key], want):
            continue
        change = f"{key}: {json.dumps(current[key], default=str)} -> {json.dumps(want)}"
        if key in updatable:
            changes.append(change)
            updates.append(key)
        else:
            why = RECREATE.get(key, "UpdateService cannot change it: create the service again")
            raise InvalidArgument(f"service {change}; {why}", field=key)
    return changes, updates, not_compared


def _task_definition_state(ecs, task: dict) -> tuple[str, str | None, bool]:
    """(the rendered definition's hash, the family's latest ACTIVE revision or None, whether a new
    revision is needed: the latest one was registered from another definition, or there is none)."""
    digest = definition_sha256(task)
    latest_arn, latest_hash = _latest_revision(ecs, task["family"])
    return digest, latest_arn, latest_hash != digest


def plan(ecs, definitions: Definitions) -> Plan:
    """Compare the rendered definitions with what ECS has; read-only calls only."""
    task, service = definitions.task, definitions.service
    cluster, name, family = service["cluster"], service["serviceName"], task["family"]

    digest, latest_arn, register = _task_definition_state(ecs, task)
    reasons = []
    if latest_arn is None:
        reasons.append(f"task definition: family {family!r} has no revision yet")
    elif register:
        reasons.append(f"task definition: {latest_arn} differs from the rendered definition")
    target_arn = None if register else latest_arn

    current = _current_service(ecs, cluster, name)
    if current is None:
        action = "create"
        reasons.append(f"service: {name!r} does not exist in cluster {cluster!r}")
    else:
        if current.get("status") == "DRAINING":
            raise Unavailable(
                f"service {name!r} is DRAINING after a delete; wait until it is INACTIVE, then rerun"
            )
        changes, updates, not_compared = _differences(current, service)
        if register or current.get("taskDefinition") != target_arn:
            changes.insert(
                0, f"taskDefinition: {current.get('taskDefinition')} -> {target_arn or 'the new revision'}"
            )
        controller = (current.get("deploymentController") or {}).get("type", "ECS")
        if changes and controller == "CODE_DEPLOY":
            raise InvalidArgument(
                f"service {name!r} uses blue/green deployments (deploymentController CODE_DEPLOY), which "
                "ECS does not let UpdateService roll; register the task definition with --register-only and "
                "start a CodeDeploy deployment with an AppSpec naming it (docs/deploy.md, blue/green)",
                field="deploymentController",
            )
        action = "update" if changes else "none"
        reasons.extend(f"service: {change}" for change in changes)
    return Plan(
        cluster=cluster,
        service=name,
        family=family,
        definition_sha256=digest,
        register=register,
        task_definition_arn=target_arn,
        service_action=action,
        reasons=reasons,
        not_compared=not_compared if current is not None else [],
        updates=updates if current is not None else [],
    )


def register(ecs, task: dict, digest: str) -> str:
    tags = [t for t in task.get("tags") or [] if t.get("key") != HASH_TAG]
    answer = ecs.register_task_definition(**{**task, "tags": tags + [{"key": HASH_TAG, "value": digest}]})
    arn = answer["taskDefinition"]["taskDefinitionArn"]
    log.info("registered %s", arn)
    return arn


def apply(ecs, definitions: Definitions, the_plan: Plan) -> tuple[Plan, dict | None]:
    """Carry out ``the_plan``: register if needed, then create or update the service. Returns the plan
    with the revision and the service as ECS answered the create/update call (None: no call)."""
    arn = the_plan.task_definition_arn
    if the_plan.register:
        arn = register(ecs, definitions.task, the_plan.definition_sha256)
    service = definitions.service
    answer = None
    if the_plan.service_action == "create":
        answer = ecs.create_service(**{**service, "taskDefinition": arn})["service"]
        log.info("created service %s on %s", the_plan.service, arn)
    elif the_plan.service_action == "update":
        updates = {key: service[key] for key in the_plan.updates}
        answer = ecs.update_service(
            cluster=the_plan.cluster, service=the_plan.service, taskDefinition=arn, **updates
        )["service"]
        log.info("updated service %s to %s", the_plan.service, arn)
    else:
        log.info("service %s left as it is; task definition %s", the_plan.service, arn)
    return Plan(**{**the_plan.to_dict(), "task_definition_arn": arn}), answer


def _primary(service: dict) -> dict | None:
    return next((d for d in service.get("deployments") or [] if d.get("status") == "PRIMARY"), None)


def wait_for_rollout(
    ecs,
    answer: dict,
    *,
    timeout_s: float = DEFAULT_WAIT_S,
    poll_s: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Wait for the deployment that a create/update call (``answer``: the service it returned) started.

    Where ECS names the service deployment (``currentServiceDeployment``), its status decides; else the
    PRIMARY deployment's ``rolloutState`` (rolling updates). Returns {id, state, reason} once it is done;
    PublishError when it failed, was rolled back or stopped; Unavailable when ``timeout_s`` passes."""
    cluster, name = answer["clusterArn"], answer["serviceName"]
    arn = answer.get("currentServiceDeployment")
    primary = _primary(answer)
    if arn is None and primary is None:
        raise PublishError(f"service {name}: ECS reported no deployment to wait for")
    deployment_id = arn or primary["id"]
    deadline = clock() + timeout_s
    while True:
        state, reason, done = (
            _service_deployment_state(ecs, arn) if arn else _rollout_state(ecs, cluster, name, primary)
        )
        log.info("deployment %s: %s (%s)", deployment_id, state, reason)
        if done:
            return {"id": deployment_id, "state": state, "reason": reason}
        if clock() >= deadline:
            raise Unavailable(
                f"deployment {deployment_id} of service {name} is still {state} after {timeout_s:g} s "
                f"({reason}); it goes on in ECS: wait with a longer --wait-timeout, or watch the console"
            )
        sleep(poll_s)


def _service_deployment_state(ecs, arn: str) -> tuple[str, str, bool]:
    answer = ecs.describe_service_deployments(serviceDeploymentArns=[arn])
    found = answer.get("serviceDeployments") or []
    if not found:
        raise PublishError(f"deployment {arn}: ECS does not know it ({answer.get('failures')})")
    deployment = found[0]
    status, reason = deployment.get("status", "?"), deployment.get("statusReason", "")
    if status in FAILED_STATUSES:
        back = (deployment.get("rollback") or {}).get("serviceRevisionArn")
        raise PublishError(
            f"deployment {arn} ended {status}: {reason or (deployment.get('rollback') or {}).get('reason')}"
            + (f"; ECS rolled back to {back}" if back else "")
        )
    return status, reason, status == "SUCCESSFUL"


def _rollout_state(ecs, cluster: str, name: str, started: dict) -> tuple[str, str, bool]:
    service = _current_service(ecs, cluster, name)
    deployments = (service or {}).get("deployments") or []
    ours = next((d for d in deployments if d.get("id") == started["id"]), None)
    primary = _primary(service or {})
    if ours is None or (primary is not None and primary.get("id") != started["id"]):
        # The circuit breaker (or an alarm) replaced it with a deployment of the last good revision.
        now = primary or {}
        raise PublishError(
            f"deployment {started['id']} of {started.get('taskDefinition')} was rolled back: ECS now deploys "
            f"{now.get('taskDefinition')} ({now.get('rolloutStateReason') or 'no reason given'})"
        )
    state, reason = ours.get("rolloutState", "?"), ours.get("rolloutStateReason", "")
    if state == "FAILED":
        raise PublishError(f"deployment {started['id']} FAILED: {reason}")
    return state, reason, state == "COMPLETED"


def deploy(
    ecs,
    definitions: Definitions,
    *,
    dry_run: bool = False,
    register_only: bool = False,
    wait: bool = True,
    wait_timeout_s: float = DEFAULT_WAIT_S,
    poll_s: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Plan:
    """Plan, then (unless ``dry_run``) apply and wait for the deployment it started; AWS errors become
    toolkit errors naming the call."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        if register_only:
            digest, latest_arn, new = _task_definition_state(ecs, definitions.task)
            the_plan = Plan(
                cluster=definitions.service["cluster"],
                service=definitions.service["serviceName"],
                family=definitions.task["family"],
                definition_sha256=digest,
                register=new,
                task_definition_arn=None if new else latest_arn,
                service_action="none",
                reasons=["--register-only: the service is left as it is"],
            )
        else:
            the_plan = plan(ecs, definitions)
        if dry_run:
            return Plan(**{**the_plan.to_dict(), "dry_run": True})
        done, answer = apply(ecs, definitions, the_plan)  # register-only: service_action "none"
        if wait and answer is not None:
            rollout = wait_for_rollout(ecs, answer, timeout_s=wait_timeout_s, poll_s=poll_s, sleep=sleep)
            done = Plan(**{**done.to_dict(), "rollout": rollout})
        return done
    except NoCredentialsError:
        raise MissingDependency(
            "AWS credentials: none found; configure a profile (AWS_PROFILE) or role, or use --validate-only"
        ) from None
    except ClientError as err:
        operation = getattr(err, "operation_name", "an ECS call")
        raise PublishError(f"ECS refused {operation}: {err}") from None
    except BotoCoreError as err:
        raise Unavailable(f"ECS could not be reached: {err}") from None


# ---- command line --------------------------------------------------------------------------------


def parse_vars(pairs: list[str], environ: dict[str, str]) -> dict[str, str]:
    """Variables from the environment, overridden by ``--var NAME=VALUE``."""
    variables = {k: v for k, v in environ.items() if VARIABLE.fullmatch("${" + k + "}")}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not VARIABLE.fullmatch("${" + name + "}"):
            raise InvalidArgument(
                f"--var: {pair!r} is not NAME=VALUE with an upper-case NAME, "
                "e.g. TRITON_IMAGE=repo/triton:0.1.0",
                field="var",
            )
        variables[name] = value
    return variables


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.ecs.deploy",
        description="Validate the modelpack ECS task and service definitions, register the task definition "
        "(only when it changed) and create or update the service.",
    )
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a ${NAME} of the definitions (also read from the environment); repeat for each",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="a file of deploy/ecs/variants/ without .json (gpu, canary); repeat to combine, in order",
    )
    parser.add_argument("--region", default=None, help="AWS region (default: AWS_REGION)")
    parser.add_argument(
        "--task-definition", type=Path, default=TASK_DEFINITION, help="(default: %(default)s)"
    )
    parser.add_argument("--service", type=Path, default=SERVICE, help="(default: %(default)s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    mode.add_argument("--validate-only", action="store_true", help="render and validate, no AWS call")
    mode.add_argument(
        "--register-only",
        action="store_true",
        help="register the task definition if it changed, leave the service (blue/green via CodeDeploy)",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="return once ECS took the change, without waiting for it"
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help="how long to wait for the deployment (default: %(default)g)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _client(region: str | None):
    import boto3
    from botocore.exceptions import NoRegionError

    try:
        return boto3.client("ecs", region_name=region)
    except NoRegionError:
        raise InvalidArgument(
            "--region: no AWS region set; pass --region or set AWS_REGION", field="region"
        ) from None


def main(argv: list[str] | None = None, *, ecs=None, environ: dict[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    environ = dict(os.environ if environ is None else environ)
    try:
        variables = parse_vars(args.var, environ)
        definitions = load_definitions(
            variables, variant=args.variant, task_path=args.task_definition, service_path=args.service
        )
        if args.validate_only:
            print(json.dumps({"taskDefinition": definitions.task, "service": definitions.service}, indent=2))
            return 0
        if ecs is None:
            ecs = _client(args.region or variables.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"))
        if args.wait_timeout <= 0:
            raise InvalidArgument(
                f"--wait-timeout: {args.wait_timeout:g} must be > 0 (or pass --no-wait)", field="wait-timeout"
            )
        result = deploy(
            ecs,
            definitions,
            dry_run=args.dry_run,
            register_only=args.register_only,
            wait=not args.no_wait,
            wait_timeout_s=args.wait_timeout,
        )
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
