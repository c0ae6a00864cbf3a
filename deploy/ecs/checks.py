"""Checks of ECS task and service definitions that the ECS API (and moto) would not all make for us.

Each ``*_problems`` function returns every problem found, one line each, naming the JSON path, the bad
value and the fix; ``check_definitions`` raises one ``InvalidArgument`` listing them all. What is
checked: images pinned (a tag other than ``latest``, or a digest), ports valid and unique in the task,
health checks on every essential container with values ECS accepts, awslogs on every container,
cpu/memory pairs that Fargate allows and container sums within the task, essential containers that
run as a non-root user, ``dependsOn`` that names real containers, conditions they can meet, and no
cycles, a ``stopTimeout`` longer than Triton's ``--exit-timeout-secs`` (so calls in flight finish before
ECS kills it), ONNX Runtime's thread count equal to the container's vCPUs, ``secrets`` that name a
Secrets Manager secret or SSM parameter (and an execution role to read them), and a service whose
``MODELPACK_ACCESS`` requires API keys gets them from a secret. For services: launch
type against the task's compatibilities, rolling-update percentages that keep full capacity, a way to
detect a failed deployment and roll it back (the circuit breaker for ROLLING; alarms and the load
balancer's second target group for ECS's own CANARY/LINEAR/BLUE_GREEN), awsvpc networking, and load
balancers that point at a real container port.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from core.errors import InvalidArgument

# Fargate's task-level cpu units -> the memory sizes (MiB) it accepts with them.
FARGATE_CPU_MEMORY: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}
COMPATIBILITIES = ("FARGATE", "EC2", "EXTERNAL")
NETWORK_MODES = ("awsvpc", "bridge", "host", "none")
DEPENDS_ON_CONDITIONS = ("START", "COMPLETE", "SUCCESS", "HEALTHY")
# ECS's limits for container health checks (seconds, except retries).
HEALTH_CHECK_LIMITS = {"interval": (5, 300), "timeout": (2, 60), "retries": (1, 10), "startPeriod": (0, 300)}
FAMILY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ROOT_USERS = {"root", "0"}
STRATEGIES = ("ROLLING", "BLUE_GREEN", "LINEAR", "CANARY")
# Fargate's longest stopTimeout (seconds); ECS's default is 30.
FARGATE_MAX_STOP_TIMEOUT = 120
THREADS_FLAG = re.compile(r"^--backend-config=onnxruntime,intra_op_thread_count=(.+)$")
# What a container secret's valueFrom may be: a Secrets Manager secret's ARN (optionally with a JSON key
# and version) or an SSM parameter's ARN or name.
SECRET_ARN = re.compile(
    r"^arn:aws[\w-]*:(secretsmanager:[\w-]+:\d{12}:secret:.+|ssm:[\w-]+:\d{12}:parameter/.+)$"
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def image_problem(image: object) -> str | None:
    """Why ``image`` is not pinned, or None. Pinned: ``repo:tag`` with a tag other than ``latest``,
    or ``repo@sha256:<64 hex>`` (with or without a tag)."""
    if not isinstance(image, str) or not image.strip():
        return f"{image!r} is not an image reference; write e.g. 'REPO/NAME:1.2.3'"
    name, _, digest = image.partition("@")
    if digest:
        if not DIGEST_PATTERN.match(digest):
            return f"{image!r} has a malformed digest; write '@sha256:' and 64 hex digits"
        return None
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{image!r} has no tag, so it floats; pin a version tag or a digest, e.g. '{name}:1.2.3'"
    tag = last.split(":", 1)[1]
    if not TAG_PATTERN.match(tag):
        return f"{image!r} has an invalid tag {tag!r}"
    if tag == "latest":
        return f"{image!r} uses the floating tag 'latest'; pin a version tag or a digest"
    return None


def _int(value: object) -> int | None:
    """ECS gives task cpu/memory as strings of integers; containers' as integers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _container_label(index: int, container: dict) -> str:
    name = container.get("name")
    return f"containerDefinitions[{index}] ({name})" if name else f"containerDefinitions[{index}]"


def task_definition_problems(task: dict) -> list[str]:
    """Every problem in a rendered task definition (the keyword arguments of RegisterTaskDefinition)."""
    problems: list[str] = []
    family = task.get("family")
    if not isinstance(family, str) or not FAMILY_PATTERN.match(family):
        problems.append(f"family: {family!r} must be 1-255 letters, digits, '-' or '_'")

    compat = task.get("requiresCompatibilities") or []
    bad = [c for c in compat if c not in COMPATIBILITIES]
    if not compat or bad:
        problems.append(
            f"requiresCompatibilities: {compat!r} must list one or more of {', '.join(COMPATIBILITIES)}"
        )
    fargate = "FARGATE" in compat
    network_mode = task.get("networkMode", "bridge")
    if network_mode not in NETWORK_MODES:
        problems.append(f"networkMode: {network_mode!r} is not one of {', '.join(NETWORK_MODES)}")
    if fargate and network_mode != "awsvpc":
        problems.append(f"networkMode: Fargate tasks need 'awsvpc', got {network_mode!r}")

    task_cpu, task_memory = _int(task.get("cpu")), _int(task.get("memory"))
    for key, value in (("cpu", task.get("cpu")), ("memory", task.get("memory"))):
        if value is not None and _int(value) is None:
            problems.append(f'{key}: {value!r} is not a whole number (write e.g. "4096")')
    if fargate:
        problems.extend(_fargate_size_problems(task.get("cpu"), task.get("memory"), task_cpu, task_memory))
        for index, volume in enumerate(task.get("volumes") or []):
            if isinstance(volume, dict) and volume.get("host"):
                problems.append(f"volumes[{index}] ({volume.get('name')}): Fargate has no host volumes")
        storage = (task.get("ephemeralStorage") or {}).get("sizeInGiB")
        if storage is not None and not (isinstance(storage, int) and 21 <= storage <= 200):
            problems.append(f"ephemeralStorage.sizeInGiB: {storage!r} must be an integer from 21 to 200")
    elif task.get("ephemeralStorage") is not None:
        problems.append("ephemeralStorage: only Fargate tasks take it; remove it for EC2")

    containers = task.get("containerDefinitions")
    if not isinstance(containers, list) or not containers:
        problems.append("containerDefinitions: the task has no containers")
        return problems
    problems.extend(_container_problems(task, containers, fargate, network_mode, task_cpu, task_memory))
    return problems


def _fargate_size_problems(cpu_raw, memory_raw, cpu: int | None, memory: int | None) -> list[str]:
    if cpu_raw is None or memory_raw is None:
        return ['cpu, memory: Fargate tasks need both at task level, e.g. "4096" and "16384"']
    if cpu is None or memory is None:
        return []  # already reported as not a whole number
    if cpu not in FARGATE_CPU_MEMORY:
        allowed = ", ".join(str(c) for c in FARGATE_CPU_MEMORY)
        return [f"cpu: {cpu} is not a Fargate size; use one of {allowed}"]
    choices = FARGATE_CPU_MEMORY[cpu]
    if memory in choices:
        return []
    if len(choices) <= 4:
        allowed = "one of " + ", ".join(map(str, choices))
    else:
        allowed = f"{choices[0]} to {choices[-1]} in steps of {choices[1] - choices[0]}"
    return [f"memory: {memory} MiB is not allowed with cpu {cpu} on Fargate; use {allowed}"]


def _container_problems(
    task: dict,
    containers: list,
    fargate: bool,
    network_mode: str,
    task_cpu: int | None,
    task_memory: int | None,
) -> list[str]:
    problems: list[str] = []
    names = [c.get("name") for c in containers if isinstance(c, dict)]
    by_name = {c.get("name"): c for c in containers if isinstance(c, dict)}
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"containerDefinitions: the name {name!r} is used more than once")
    volumes = {v.get("name") for v in task.get("volumes") or [] if isinstance(v, dict)}
    if not any(c.get("essential", True) for c in containers if isinstance(c, dict)):
        problems.append(
            "containerDefinitions: no container is essential; mark the serving containers essential"
        )

    seen_ports: dict[tuple[int, str], str] = {}
    cpu_sum = memory_sum = 0
    for index, container in enumerate(containers):
        if not isinstance(container, dict):
            problems.append(f"containerDefinitions[{index}]: expected an object, got {container!r}")
            continue
        where = _container_label(index, container)
        essential = container.get("essential", True)
        if not container.get("name"):
            problems.append(f"{where}.name: every container needs a name")
        problem = image_problem(container.get("image"))
        if problem:
            problems.append(f"{where}.image: {problem}")

        user = str(container.get("user", "")).split(":", 1)[0]
        if essential and (not user or user in ROOT_USERS):
            problems.append(
                f"{where}.user: {container.get('user')!r}: essential containers run as a non-root user; "
                'set the image\'s unprivileged uid, e.g. "1000:1000"'
            )
        if container.get("privileged"):
            problems.append(f"{where}.privileged: must be false")

        problems.extend(_drain_problems(where, container, fargate))
        problems.extend(_port_problems(where, container, network_mode, seen_ports))
        problems.extend(_health_check_problems(where, container, essential))
        problems.extend(_log_problems(where, container, fargate))
        problems.extend(_secret_problems(where, container, task))

        for mount_index, mount in enumerate(container.get("mountPoints") or []):
            if mount.get("sourceVolume") not in volumes:
                problems.append(
                    f"{where}.mountPoints[{mount_index}].sourceVolume: {mount.get('sourceVolume')!r} is not "
                    f"one of the task's volumes ({', '.join(sorted(map(str, volumes))) or 'none'})"
                )

        cpu, memory = container.get("cpu", 0), container.get("memory")
        reservation = container.get("memoryReservation")
        if not isinstance(cpu, int) or cpu < 0:
            problems.append(f"{where}.cpu: {cpu!r} must be a whole number of cpu units >= 0")
        else:
            cpu_sum += cpu
        if memory is None and reservation is None and task_memory is None:
            problems.append(f"{where}.memory: without task-level memory each container needs memory")
        if memory is not None:
            if not isinstance(memory, int) or memory < 6:
                problems.append(f"{where}.memory: {memory!r} must be a whole number of MiB >= 6")
            else:
                memory_sum += memory
                if isinstance(reservation, int) and reservation > memory:
                    problems.append(f"{where}.memoryReservation: {reservation} is above memory {memory}")
        if fargate:
            requirements = container.get("resourceRequirements") or []
            if any(r.get("type") == "GPU" for r in requirements):
                problems.append(f"{where}.resourceRequirements: Fargate has no GPUs; use the EC2 GPU variant")
            if (container.get("linuxParameters") or {}).get("sharedMemorySize") is not None:
                problems.append(f"{where}.linuxParameters.sharedMemorySize: not supported on Fargate")

    if task_cpu is not None and cpu_sum > task_cpu:
        problems.append(f"containerDefinitions: their cpu adds up to {cpu_sum}, above the task's {task_cpu}")
    if task_memory is not None and memory_sum > task_memory:
        problems.append(
            f"containerDefinitions: their memory adds up to {memory_sum} MiB, above the task's {task_memory}"
        )
    problems.extend(_depends_on_problems(containers, by_name))
    return problems


def _drain_problems(where: str, container: dict, fargate: bool) -> list[str]:
    """Triton's stop and threads: stopTimeout past --exit-timeout-secs, ONNX Runtime's threads = vCPUs."""
    problems = []
    command = [str(c) for c in container.get("command") or []]
    stop = container.get("stopTimeout")
    if fargate and stop is not None and not (isinstance(stop, int) and 2 <= stop <= FARGATE_MAX_STOP_TIMEOUT):
        problems.append(
            f"{where}.stopTimeout: {stop!r} must be from 2 to {FARGATE_MAX_STOP_TIMEOUT} s on Fargate"
        )
    exit_timeout = next((c.split("=", 1)[1] for c in command if c.startswith("--exit-timeout-secs=")), None)
    if exit_timeout is not None:
        if not exit_timeout.isdigit():
            problems.append(f"{where}.command: --exit-timeout-secs={exit_timeout} is not a whole number")
        elif not isinstance(stop, int) or stop <= int(exit_timeout):
            problems.append(
                f"{where}.stopTimeout: {stop!r} must be above --exit-timeout-secs={exit_timeout}, or ECS "
                "kills Triton before the calls in flight finish; e.g. exit timeout + 15"
            )
    for flag in command:
        match = THREADS_FLAG.match(flag)
        if match is None:
            continue
        cpu = container.get("cpu", 0)
        want = max(1, math.ceil(cpu / 1024)) if isinstance(cpu, int) else None
        if want is not None and match.group(1) != str(want):
            problems.append(
                f"{where}.command: intra_op_thread_count={match.group(1)} but the container has {cpu} cpu "
                f"units ({want} vCPU); set it to {want} so ONNX Runtime does not oversubscribe the task"
            )
    return problems


def _secret_problems(where: str, container: dict, task: dict) -> list[str]:
    """Secrets: a name each, from a Secrets Manager secret or an SSM parameter, not also in environment,
    an execution role to fetch them; and a service that requires API keys (``MODELPACK_ACCESS``) gets
    its keys variable from a secret, never from plain environment."""
    problems = []
    secrets = container.get("secrets") or []
    environment = {e.get("name"): e.get("value") for e in container.get("environment") or []}
    for index, secret in enumerate(secrets):
        at = f"{where}.secrets[{index}]"
        name, value = secret.get("name"), secret.get("valueFrom")
        if not isinstance(name, str) or not ENV_NAME.match(name):
            problems.append(f"{at}.name: {name!r} is not an environment variable name")
        if not isinstance(value, str) or not (SECRET_ARN.match(value) or value.startswith("/")):
            problems.append(
                f"{at}.valueFrom: {value!r} is neither a Secrets Manager secret ARN "
                "(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME) nor an SSM parameter"
            )
        if name in environment:
            problems.append(f"{at}.name: {name} is also in environment; give it in one place only")
    if secrets and not task.get("executionRoleArn"):
        problems.append(
            f"{where}.secrets: ECS fetches secrets with the task's executionRoleArn, which is missing"
        )
    access = environment.get("MODELPACK_ACCESS")
    if access is not None:
        problems.extend(_access_problems(where, access, environment, {s.get("name") for s in secrets}))
    return problems


def _access_problems(where: str, text: str, environment: dict, secret_names: set) -> list[str]:
    """``MODELPACK_ACCESS`` read as the service reads it (serving.settings.AccessSettings)."""
    import yaml
    from pydantic import ValidationError

    from serving.settings import AccessSettings

    try:
        access = AccessSettings.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError, TypeError) as err:
        first = str(err).splitlines()[:3]
        return [f"{where}.environment MODELPACK_ACCESS: not a valid access section: {' '.join(first)}"]
    if access.require_keys and access.keys_file is None and access.keys_env not in secret_names:
        given = " (it is plain environment: move it to secrets)" if access.keys_env in environment else ""
        return [
            f"{where}.secrets: MODELPACK_ACCESS requires API keys but no secret sets "
            f"${access.keys_env}{given}; "
            f'add {{"name": "{access.keys_env}", "valueFrom": "<secret ARN>"}}'
        ]
    return []


def _port_problems(
    where: str, container: dict, network_mode: str, seen: dict[tuple[int, str], str]
) -> list[str]:
    problems = []
    for index, mapping in enumerate(container.get("portMappings") or []):
        port, protocol = mapping.get("containerPort"), mapping.get("protocol", "tcp")
        at = f"{where}.portMappings[{index}]"
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            problems.append(f"{at}.containerPort: {port!r} must be a port number from 1 to 65535")
            continue
        if protocol not in ("tcp", "udp"):
            problems.append(f"{at}.protocol: {protocol!r} must be 'tcp' or 'udp'")
        host_port = mapping.get("hostPort")
        if network_mode == "awsvpc" and host_port not in (None, port):
            problems.append(
                f"{at}.hostPort: {host_port!r} must equal containerPort {port} (or be left out) in awsvpc"
            )
        if network_mode == "awsvpc":
            # Every container of an awsvpc task shares one network namespace.
            key = (port, protocol)
            if key in seen:
                problems.append(f"{at}.containerPort: {port}/{protocol} is already taken by {seen[key]}")
            seen[key] = container.get("name", where)
    return problems


def _health_check_problems(where: str, container: dict, essential: bool) -> list[str]:
    check = container.get("healthCheck")
    if check is None:
        if essential:
            return [
                f"{where}.healthCheck: every essential container needs one (ECS restarts unhealthy tasks)"
            ]
        return []
    problems = []
    command = check.get("command")
    if not isinstance(command, list) or len(command) < 2 or command[0] not in ("CMD", "CMD-SHELL"):
        problems.append(
            f"{where}.healthCheck.command: {command!r} must be a list starting with 'CMD' or 'CMD-SHELL', "
            'e.g. ["CMD", "curl", "--fail", "http://127.0.0.1:8000/v2/health/ready"]'
        )
    for key, (low, high) in HEALTH_CHECK_LIMITS.items():
        value = check.get(key)
        if value is not None and (not isinstance(value, int) or not low <= value <= high):
            problems.append(f"{where}.healthCheck.{key}: {value!r} must be an integer from {low} to {high}")
    interval, timeout = check.get("interval", 30), check.get("timeout", 5)
    if isinstance(interval, int) and isinstance(timeout, int) and timeout >= interval:
        problems.append(
            f"{where}.healthCheck.timeout: {timeout} s must be shorter than the interval {interval} s"
        )
    return problems


def _log_problems(where: str, container: dict, fargate: bool) -> list[str]:
    config = container.get("logConfiguration")
    if not config:
        return [f"{where}.logConfiguration: missing; send logs to CloudWatch with the awslogs driver"]
    if config.get("logDriver") != "awslogs":
        return [f"{where}.logConfiguration.logDriver: {config.get('logDriver')!r}; use 'awslogs'"]
    options = config.get("options") or {}
    required = ["awslogs-group", "awslogs-region"] + (["awslogs-stream-prefix"] if fargate else [])
    return [f"{where}.logConfiguration.options.{key}: missing" for key in required if not options.get(key)]


def _depends_on_problems(containers: list, by_name: dict[str, dict]) -> list[str]:
    problems = []
    graph: dict[str, list[str]] = {}
    for index, container in enumerate(containers):
        if not isinstance(container, dict):
            continue
        where = _container_label(index, container)
        for dep_index, dep in enumerate(container.get("dependsOn") or []):
            at = f"{where}.dependsOn[{dep_index}]"
            target, condition = dep.get("containerName"), dep.get("condition")
            if target == container.get("name"):
                problems.append(f"{at}.containerName: a container cannot depend on itself")
                continue
            if target not in by_name:
                problems.append(f"{at}.containerName: {target!r} is not a container of this task")
                continue
            graph.setdefault(container.get("name"), []).append(target)
            if condition not in DEPENDS_ON_CONDITIONS:
                problems.append(
                    f"{at}.condition: {condition!r} is not one of {', '.join(DEPENDS_ON_CONDITIONS)}"
                )
            elif condition == "HEALTHY" and not by_name[target].get("healthCheck"):
                problems.append(f"{at}.condition: HEALTHY needs a healthCheck on {target!r}")
            elif condition in ("SUCCESS", "COMPLETE") and by_name[target].get("essential", True):
                problems.append(
                    f"{at}.condition: {condition} waits for {target!r} to exit, but it is essential and its "
                    'exit would stop the task; mark it "essential": false'
                )
    cycle = _find_cycle(graph)
    if cycle:
        problems.append(f"dependsOn: the containers wait on each other in a cycle: {' -> '.join(cycle)}")
    return problems


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if state.get(nxt) is None:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in graph:
        if state.get(start) is None:
            found = visit(start, [start])
            if found:
                return found
    return None


def service_problems(service: dict, task: dict) -> list[str]:
    """Every problem in a rendered service definition (CreateService arguments) against its task."""
    problems: list[str] = []
    name = service.get("serviceName")
    if not isinstance(name, str) or not FAMILY_PATTERN.match(name):
        problems.append(f"serviceName: {name!r} must be 1-255 letters, digits, '-' or '_'")
    if not service.get("cluster"):
        problems.append("cluster: missing; name the ECS cluster")
    desired = service.get("desiredCount")
    if not isinstance(desired, int) or isinstance(desired, bool) or desired < 0:
        problems.append(f"desiredCount: {desired!r} must be a whole number >= 0")

    compat = task.get("requiresCompatibilities") or []
    launch_type = service.get("launchType")
    if launch_type is not None and launch_type not in compat:
        problems.append(
            f"launchType: {launch_type!r} is not among the task's requiresCompatibilities {compat}; "
            "use the matching variant"
        )
    if service.get("platformVersion") is not None and launch_type != "FARGATE":
        problems.append("platformVersion: only Fargate services take one; remove it")

    controller = (service.get("deploymentController") or {}).get("type", "ECS")
    deployment = service.get("deploymentConfiguration") or {}
    if controller == "ECS":
        problems.extend(_strategy_problems(service, deployment))
        low, high = deployment.get("minimumHealthyPercent", 100), deployment.get("maximumPercent", 200)
        if low != 100:
            problems.append(
                f"deploymentConfiguration.minimumHealthyPercent: {low!r}; keep 100 so a rolling update "
                "never drops below the desired count (Kubernetes' maxUnavailable 0)"
            )
        if not isinstance(high, int) or high <= 100:
            problems.append(
                f"deploymentConfiguration.maximumPercent: {high!r} must be above 100, or a rolling update "
                "with minimumHealthyPercent 100 cannot start a new task"
            )
    elif controller not in ("CODE_DEPLOY", "EXTERNAL"):
        problems.append(f"deploymentController.type: {controller!r} is not ECS, CODE_DEPLOY or EXTERNAL")

    if task.get("networkMode") == "awsvpc":
        vpc = (service.get("networkConfiguration") or {}).get("awsvpcConfiguration") or {}
        if not vpc.get("subnets"):
            problems.append("networkConfiguration.awsvpcConfiguration.subnets: awsvpc tasks need subnets")
        if not vpc.get("securityGroups"):
            problems.append("networkConfiguration.awsvpcConfiguration.securityGroups: give at least one")

    containers = {c.get("name"): c for c in task.get("containerDefinitions") or [] if isinstance(c, dict)}
    for index, balancer in enumerate(service.get("loadBalancers") or []):
        target = balancer.get("containerName")
        at = f"loadBalancers[{index}]"
        if target not in containers:
            problems.append(f"{at}.containerName: {target!r} is not a container of the task")
            continue
        ports = [m.get("containerPort") for m in containers[target].get("portMappings") or []]
        if balancer.get("containerPort") not in ports:
            problems.append(
                f"{at}.containerPort: {balancer.get('containerPort')!r} is not one of "
                f"{target}'s ports {ports}"
            )
        if not containers[target].get("essential", True):
            problems.append(
                f"{at}.containerName: {target!r} is not essential; balance onto a serving container"
            )
    return problems


def _strategy_problems(service: dict, deployment: dict) -> list[str]:
    """How ECS finds out that a deployment failed, and can move traffic, for the chosen strategy."""
    strategy = deployment.get("strategy", "ROLLING")
    at = "deploymentConfiguration"
    if strategy not in STRATEGIES:
        return [f"{at}.strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}"]
    problems = []
    if strategy == "ROLLING":
        breaker = deployment.get("deploymentCircuitBreaker") or {}
        if not (breaker.get("enable") and breaker.get("rollback")):
            problems.append(
                f"{at}.deploymentCircuitBreaker: {breaker or None!r}; enable it with rollback, or a rolling "
                'update whose tasks never get healthy goes on forever: {"enable": true, "rollback": true}'
            )
        return problems
    alarms = deployment.get("alarms") or {}
    if not (alarms.get("enable") and alarms.get("rollback") and alarms.get("alarmNames")):
        problems.append(
            f"{at}.alarms: {alarms or None!r}; a {strategy} deployment needs CloudWatch alarms with rollback "
            "to judge the new revision (e.g. the Bento's 5xx count and p99 latency)"
        )
    if strategy == "CANARY":
        canary = deployment.get("canaryConfiguration") or {}
        percent, bake = canary.get("canaryPercent"), canary.get("canaryBakeTimeInMinutes")
        if (
            not isinstance(percent, (int, float))
            or not 0.1 <= percent <= 100
            or round(percent * 10) != percent * 10
        ):
            problems.append(
                f"{at}.canaryConfiguration.canaryPercent: {percent!r} must be 0.1 to 100 in steps of 0.1"
            )
        if not isinstance(bake, int) or not 0 <= bake <= 1440:
            problems.append(f"{at}.canaryConfiguration.canaryBakeTimeInMinutes: {bake!r} must be 0 to 1440")
    balancers = service.get("loadBalancers") or []
    if not balancers:
        problems.append(
            f"loadBalancers: a {strategy} deployment moves traffic through a load balancer; give one"
        )
    for index, balancer in enumerate(balancers):
        advanced = balancer.get("advancedConfiguration") or {}
        missing = [
            k for k in ("alternateTargetGroupArn", "productionListenerRule", "roleArn") if not advanced.get(k)
        ]
        if missing:
            problems.append(
                f"loadBalancers[{index}].advancedConfiguration: {', '.join(missing)} missing; a {strategy} "
                "deployment runs the new revision in the alternate target group and moves the production "
                "listener rule's traffic to it with that role"
            )
    return problems


def check_definitions(task: dict, service: dict | None = None, *, source: str = "definitions") -> None:
    """Raise one InvalidArgument listing every problem of the task (and service) definition."""
    problems = task_definition_problems(task)
    if service is not None:
        problems += [f"service {p}" for p in service_problems(service, task)]
    if problems:
        raise InvalidArgument(_listing(source, problems), field=problems[0].split(":", 1)[0])


def _listing(source: str, problems: Iterable[str]) -> str:
    problems = list(problems)
    return f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"- {p}" for p in problems)
