"""ECS: the shipped task and service definitions pass our own checks (moto would accept worse), each
check refuses what it should with a message naming the field and the fix, and deploy.py registers,
rolls out against moto's ECS (idempotently, comparing every key of service.json) and waits for the
deployment it started: done, failed, rolled back or too slow. Where moto does not model what ECS
reports during a rollout (a circuit-breaker rollback, DescribeServiceDeployments), the test sets moto's
state, or stubs the call with botocore's Stubber (which checks requests and answers against ECS's API
model), as ECS documents them."""

from __future__ import annotations

import copy
import json

import pytest

from core.errors import InvalidArgument
from deploy.ecs import checks as ecs_checks
from deploy.ecs import deploy as ecs_deploy

REGION = "us-east-1"
BASE_VARS = {
    "TRITON_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/modelpack-triton:0.1.0",
    "BENTO_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/modelpack-bento:0.1.0",
    "EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/modelpack-execution",
    "TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/modelpack-task",
    "MODEL_RELEASES_S3": "s3://modelpack-models/releases",
    "MODEL_RELEASE": "97a0847f7910aa55eec9230390e5998ad20707817cad606022093bee3fcb5839",
    "LOG_GROUP": "/ecs/modelpack",
    "AWS_REGION": REGION,
    "CLUSTER": "modelpack",
    "SUBNETS": "subnet-aaaa,subnet-bbbb",
    "SECURITY_GROUPS": "sg-1234",
    "TARGET_GROUP_ARN": "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/modelpack/0123abcd",
    "API_KEYS_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:modelpack/api-keys-AbCdEf",
}


@pytest.fixture
def definitions() -> ecs_deploy.Definitions:
    return ecs_deploy.load_definitions(BASE_VARS)


@pytest.fixture
def aws(monkeypatch):
    """moto's AWS with a cluster, a VPC (two subnets, a security group) and a target group."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        # moto starts a service's tasks at once (as many as desired): its deployment is COMPLETED.
        "MOTO_ECS_SERVICE_RUNNING": "2",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3
    from moto import mock_aws

    with mock_aws():
        ecs = boto3.client("ecs", region_name=REGION)
        ecs.create_cluster(clusterName="modelpack")
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)
        ]
        group = ec2.create_security_group(GroupName="modelpack", Description="modelpack", VpcId=vpc)[
            "GroupId"
        ]
        elb = boto3.client("elbv2", region_name=REGION)
        target_group = elb.create_target_group(
            Name="modelpack", Protocol="HTTP", Port=3000, VpcId=vpc, TargetType="ip"
        )["TargetGroups"][0]["TargetGroupArn"]
        variables = dict(
            BASE_VARS, SUBNETS=",".join(subnets), SECURITY_GROUPS=group, TARGET_GROUP_ARN=target_group
        )
        yield ecs, variables


def _revisions(ecs) -> list[str]:
    return ecs.list_task_definitions(familyPrefix="modelpack")["taskDefinitionArns"]


# ---- the shipped definitions --------------------------------------------------------------------


def test_shipped_definitions_pass(definitions):
    task, service = definitions.task, definitions.service
    assert ecs_checks.task_definition_problems(task) == []
    assert ecs_checks.service_problems(service, task) == []
    assert (task["cpu"], task["memory"]) == ("4096", "16384")
    containers = {c["name"]: c for c in task["containerDefinitions"]}
    assert [n for n, c in containers.items() if c["essential"]] == ["triton", "bento"]
    assert containers["bento"]["dependsOn"] == [
        {"containerName": "service-model-sync", "condition": "SUCCESS"},
        {"containerName": "triton", "condition": "HEALTHY"},
    ]
    env = {e["name"]: e["value"] for e in containers["bento"]["environment"]}
    assert env["MODELPACK_TRITON_URL"] == "127.0.0.1:8001"  # one awsvpc task: one network namespace
    assert service["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == ["subnet-aaaa", "subnet-bbbb"]
    assert service["deploymentConfiguration"]["minimumHealthyPercent"] == 100


def test_bento_requires_api_keys_from_a_secret_and_triton_caches(definitions):
    """API keys and rate limits are on in the ECS task (off in the service's own service.yaml): the
    access section as the service reads it, the keys from Secrets Manager; Triton runs with its local
    response cache."""
    from serving.settings import AccessSettings

    containers = {c["name"]: c for c in definitions.task["containerDefinitions"]}
    bento = containers["bento"]
    env = {e["name"]: e["value"] for e in bento["environment"]}
    access = AccessSettings.model_validate(json.loads(env["MODELPACK_ACCESS"]))
    assert access.require_keys and access.rate_limit.requests_per_s > 0 and access.keys_file is None
    assert bento["secrets"] == [{"name": access.keys_env, "valueFrom": BASE_VARS["API_KEYS_SECRET_ARN"]}]
    assert access.keys_env not in env
    assert "--cache-config=local,size=268435456" in containers["triton"]["command"]


def test_gpu_variant_runs_on_ec2_with_one_gpu():
    definitions = ecs_deploy.load_definitions(BASE_VARS, variant="gpu")
    task, service = definitions.task, definitions.service
    assert task["requiresCompatibilities"] == ["EC2"] and "ephemeralStorage" not in task
    triton = next(c for c in task["containerDefinitions"] if c["name"] == "triton")
    assert triton["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert service["launchType"] == "EC2" and "platformVersion" not in service


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(InvalidArgument, match=r"no variant 'tpu' \(known: canary, gpu\)"):
        ecs_deploy.load_definitions(BASE_VARS, variant="tpu")


ELB = "arn:aws:elasticloadbalancing:us-east-1:123456789012"
CANARY_VARS = {
    **BASE_VARS,
    "CANARY_ALARMS": "modelpack-bento-5xx,modelpack-bento-p99",
    "ALTERNATE_TARGET_GROUP_ARN": f"{ELB}:targetgroup/modelpack-b/4567",
    "PRODUCTION_LISTENER_RULE_ARN": f"{ELB}:listener-rule/app/x/1/2/3",
    "ECS_INFRASTRUCTURE_ROLE_ARN": "arn:aws:iam::123456789012:role/ecs-infrastructure",
}


@pytest.mark.parametrize("variants", [["canary"], ["gpu", "canary"]])
def test_canary_variant_is_ecs_own_canary(variants):
    """ECS's native canary (strategy CANARY, in the ECS API this botocore models): a share of the traffic
    to the new revision, alarms that roll it back, the target groups and rule it moves traffic with."""
    definitions = ecs_deploy.load_definitions(CANARY_VARS, variant=variants)
    deployment = definitions.service["deploymentConfiguration"]
    assert deployment["strategy"] == "CANARY"
    assert deployment["canaryConfiguration"] == {"canaryPercent": 10.0, "canaryBakeTimeInMinutes": 15}
    assert deployment["alarms"] == {
        "alarmNames": ["modelpack-bento-5xx", "modelpack-bento-p99"],
        "enable": True,
        "rollback": True,
    }
    advanced = definitions.service["loadBalancers"][0]["advancedConfiguration"]
    assert advanced["alternateTargetGroupArn"] == CANARY_VARS["ALTERNATE_TARGET_GROUP_ARN"]
    assert definitions.variant == ", ".join(variants)
    # What the variant sets is what the ECS API takes (botocore validates the request shape).
    import botocore.session
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("UpdateService").input_shape
    update = {"service": "modelpack", "cluster": "modelpack", **definitions.service}
    for key in ("serviceName", "launchType", "platformVersion"):
        update.pop(key, None)
    validate_parameters(update, shape)


def test_release_variable_must_be_a_digest():
    with pytest.raises(InvalidArgument, match="MODEL_RELEASE: 'latest' is not a release digest"):
        ecs_deploy.load_definitions({**BASE_VARS, "MODEL_RELEASE": "latest"})


def test_sync_containers_run_the_kubernetes_init_scripts():
    """The ECS task downloads and checks the release with the very scripts the Kubernetes pods run."""
    import yaml

    task = ecs_deploy.load_definitions(BASE_VARS).task
    containers = _containers(task)
    for deployment, container in (("triton", "model-sync"), ("bento", "service-model-sync")):
        manifest = (ecs_deploy.HERE.parent / "k8s" / "base" / f"{deployment}.yaml").read_text()
        pod = next(d for d in yaml.safe_load_all(manifest) if d["kind"] == "Deployment")["spec"]["template"]
        script = next(c for c in pod["spec"]["initContainers"] if c["name"] == "model-sync")["args"][0]
        assert containers[container]["entryPoint"] == ["sh", "-c"]
        assert containers[container]["command"] == [script]
        env = {e["name"]: e["value"] for e in containers[container]["environment"]}
        assert env["MODEL_RELEASE"] == BASE_VARS["MODEL_RELEASE"]


def test_every_unset_variable_is_named_with_where_it_is_used():
    with pytest.raises(InvalidArgument) as caught:
        ecs_deploy.load_definitions({"AWS_REGION": REGION})
    message = str(caught.value)
    for name in set(BASE_VARS) - {"AWS_REGION"}:
        assert f"- {name} (used at " in message
    assert "task-definition.json: containerDefinitions[2].image" in message
    assert "service.json: networkConfiguration.awsvpcConfiguration.subnets[0]" in message
    assert "--var NAME=VALUE" in message


# ---- each check refuses what it should ----------------------------------------------------------


def _containers(task: dict) -> dict[str, dict]:
    return {c["name"]: c for c in task["containerDefinitions"]}


MUTATIONS = {
    "floating tag": (
        lambda t, s: _containers(t)["bento"].update(image="example/bento:latest"),
        "containerDefinitions[3] (bento).image: 'example/bento:latest' uses the floating tag 'latest'",
    ),
    "no tag": (
        lambda t, s: _containers(t)["triton"].update(image="registry:5000/triton"),
        "has no tag, so it floats; pin a version tag or a digest",
    ),
    "bad digest": (
        lambda t, s: _containers(t)["triton"].update(image="triton@sha256:abc"),
        "has a malformed digest",
    ),
    "fargate memory": (
        lambda t, s: t.update(memory="4096"),
        "memory: 4096 MiB is not allowed with cpu 4096 on Fargate; use 8192 to 30720 in steps of 1024",
    ),
    "fargate cpu": (
        lambda t, s: t.update(cpu="3000"),
        "cpu: 3000 is not a Fargate size; use one of 256, 512",
    ),
    "container memory above task": (
        lambda t, s: _containers(t)["triton"].update(memory=16000),
        "their memory adds up to 19584 MiB, above the task's 16384",
    ),
    "no health check": (
        lambda t, s: _containers(t)["bento"].pop("healthCheck"),
        "containerDefinitions[3] (bento).healthCheck: every essential container needs one",
    ),
    "health check timeout": (
        lambda t, s: _containers(t)["triton"]["healthCheck"].update(timeout=20),
        "(triton).healthCheck.timeout: 20 s must be shorter than the interval 15 s",
    ),
    "health check command": (
        lambda t, s: _containers(t)["triton"]["healthCheck"].update(command=["curl", "-f", "x"]),
        "healthCheck.command: ['curl', '-f', 'x'] must be a list starting with 'CMD' or 'CMD-SHELL'",
    ),
    "duplicate port": (
        lambda t, s: _containers(t)["bento"]["portMappings"].append({"containerPort": 8001}),
        "(bento).portMappings[1].containerPort: 8001/tcp is already taken by triton",
    ),
    "port range": (
        lambda t, s: _containers(t)["bento"]["portMappings"][0].update(containerPort=70000),
        "containerPort: 70000 must be a port number from 1 to 65535",
    ),
    "root user": (
        lambda t, s: _containers(t)["triton"].update(user="0"),
        "(triton).user: '0': essential containers run as a non-root user",
    ),
    "no essential": (
        lambda t, s: [c.update(essential=False) for c in t["containerDefinitions"]],
        "no container is essential",
    ),
    "depends on unknown": (
        lambda t, s: _containers(t)["triton"]["dependsOn"][0].update(containerName="model-fetch"),
        "(triton).dependsOn[0].containerName: 'model-fetch' is not a container of this task",
    ),
    "healthy without check": (
        lambda t, s: _containers(t)["bento"]["dependsOn"].append(
            {"containerName": "model-sync", "condition": "HEALTHY"}
        ),
        "HEALTHY needs a healthCheck on 'model-sync'",
    ),
    "success on essential": (
        lambda t, s: _containers(t)["bento"]["dependsOn"][1].update(condition="SUCCESS"),
        "SUCCESS waits for 'triton' to exit, but it is essential",
    ),
    "cycle": (
        lambda t, s: _containers(t)["triton"]["dependsOn"].append(
            {"containerName": "bento", "condition": "START"}
        ),
        "the containers wait on each other in a cycle: triton -> bento -> triton",
    ),
    "gpu on fargate": (
        lambda t, s: _containers(t)["triton"].update(resourceRequirements=[{"type": "GPU", "value": "1"}]),
        "(triton).resourceRequirements: Fargate has no GPUs; use the EC2 GPU variant",
    ),
    "no awslogs": (
        lambda t, s: _containers(t)["bento"].pop("logConfiguration"),
        "(bento).logConfiguration: missing; send logs to CloudWatch with the awslogs driver",
    ),
    "unknown volume": (
        lambda t, s: _containers(t)["triton"]["mountPoints"][0].update(sourceVolume="model"),
        "mountPoints[0].sourceVolume: 'model' is not one of the task's volumes (models, service-models)",
    ),
    "bridge on fargate": (
        lambda t, s: t.update(networkMode="bridge"),
        "networkMode: Fargate tasks need 'awsvpc', got 'bridge'",
    ),
    "rolling below capacity": (
        lambda t, s: s["deploymentConfiguration"].update(minimumHealthyPercent=50),
        "service deploymentConfiguration.minimumHealthyPercent: 50; keep 100",
    ),
    "launch type": (
        lambda t, s: s.update(launchType="EC2"),
        "service launchType: 'EC2' is not among the task's requiresCompatibilities ['FARGATE']",
    ),
    "balancer port": (
        lambda t, s: s["loadBalancers"][0].update(containerPort=8080),
        "service loadBalancers[0].containerPort: 8080 is not one of bento's ports [3000]",
    ),
    "no subnets": (
        lambda t, s: s["networkConfiguration"]["awsvpcConfiguration"].update(subnets=[]),
        "service networkConfiguration.awsvpcConfiguration.subnets: awsvpc tasks need subnets",
    ),
    "stop before the exit timeout": (
        lambda t, s: _containers(t)["triton"].update(stopTimeout=30),
        "(triton).stopTimeout: 30 must be above --exit-timeout-secs=30, or ECS kills Triton",
    ),
    "stop timeout on fargate": (
        lambda t, s: _containers(t)["triton"].update(stopTimeout=300),
        "(triton).stopTimeout: 300 must be from 2 to 120 s on Fargate",
    ),
    "threads above the vcpus": (
        lambda t, s: _containers(t)["triton"].update(cpu=1024),
        "intra_op_thread_count=3 but the container has 1024 cpu units (1 vCPU); set it to 1",
    ),
    "no circuit breaker": (
        lambda t, s: s["deploymentConfiguration"].pop("deploymentCircuitBreaker"),
        "service deploymentConfiguration.deploymentCircuitBreaker: None; enable it with rollback",
    ),
    "unknown strategy": (
        lambda t, s: s["deploymentConfiguration"].update(strategy="GRADUAL"),
        "deploymentConfiguration.strategy: 'GRADUAL' is not one of ROLLING, BLUE_GREEN, LINEAR, CANARY",
    ),
    "secret not an arn": (
        lambda t, s: _containers(t)["bento"]["secrets"][0].update(valueFrom="my-keys"),
        "(bento).secrets[0].valueFrom: 'my-keys' is neither a Secrets Manager secret ARN",
    ),
    "secret also in environment": (
        lambda t, s: _containers(t)["bento"]["environment"].append(
            {"name": "MODELPACK_API_KEYS", "value": "x"}
        ),
        "(bento).secrets[0].name: MODELPACK_API_KEYS is also in environment",
    ),
    "keys required without a secret": (
        lambda t, s: _containers(t)["bento"].pop("secrets"),
        "(bento).secrets: MODELPACK_ACCESS requires API keys but no secret sets $MODELPACK_API_KEYS",
    ),
    "access section with a typo": (
        lambda t, s: next(
            e for e in _containers(t)["bento"]["environment"] if e["name"] == "MODELPACK_ACCESS"
        ).update(value='{"require_key": true}'),
        "(bento).environment MODELPACK_ACCESS: not a valid access section",
    ),
    "canary without alarms or target groups": (
        lambda t, s: s["deploymentConfiguration"].update(
            strategy="CANARY", canaryConfiguration={"canaryPercent": 10.0, "canaryBakeTimeInMinutes": 15}
        ),
        "a CANARY deployment needs CloudWatch alarms with rollback",
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_check_refuses(definitions, case):
    mutate, expected = MUTATIONS[case]
    task, service = copy.deepcopy(definitions.task), copy.deepcopy(definitions.service)
    mutate(task, service)
    with pytest.raises(InvalidArgument) as caught:
        ecs_checks.check_definitions(task, service, source="mutated")
    assert expected in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("nvcr.io/nvidia/tritonserver:24.10-py3", True),
        ("localhost:5000/modelpack-bento:0.1.0", True),
        ("repo/app@sha256:" + "a" * 64, True),
        ("repo/app:1.0@sha256:" + "b" * 64, True),
        ("localhost:5000/modelpack-bento", False),
        ("repo/app:latest", False),
        ("", False),
    ],
)
def test_image_pinning(image, pinned):
    assert (ecs_checks.image_problem(image) is None) is pinned


# ---- deploy.py against moto ---------------------------------------------------------------------


def test_dry_run_plans_and_changes_nothing(aws):
    ecs, variables = aws
    plan = ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables), dry_run=True)
    assert plan.dry_run and plan.register and plan.service_action == "create"
    assert plan.task_definition_arn is None
    assert _revisions(ecs) == []
    assert ecs.describe_services(cluster="modelpack", services=["modelpack"])["services"] == []


def test_deploy_creates_then_does_nothing_when_unchanged(aws):
    ecs, variables = aws
    definitions = ecs_deploy.load_definitions(variables)
    first = ecs_deploy.deploy(ecs, definitions)
    assert first.register and first.service_action == "create"
    assert first.task_definition_arn.endswith("task-definition/modelpack:1")
    service = ecs.describe_services(cluster="modelpack", services=["modelpack"])["services"][0]
    assert service["taskDefinition"] == first.task_definition_arn
    assert service["launchType"] == "FARGATE" and service["desiredCount"] == 2
    registered = ecs.describe_task_definition(taskDefinition="modelpack", include=["TAGS"])
    assert {"key": ecs_deploy.HASH_TAG, "value": first.definition_sha256} in registered["tags"]
    containers = {c["name"]: c for c in registered["taskDefinition"]["containerDefinitions"]}
    assert containers["triton"]["image"] == variables["TRITON_IMAGE"]

    again = ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables))
    assert not again.register and again.service_action == "none"
    assert again.task_definition_arn == first.task_definition_arn
    assert len(_revisions(ecs)) == 1


def test_changed_image_registers_one_revision_and_rolls_the_service(aws):
    ecs, variables = aws
    ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables))
    newer = dict(variables, BENTO_IMAGE=variables["BENTO_IMAGE"].replace(":0.1.0", ":0.1.1"))

    plan = ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(newer), dry_run=True)
    assert plan.register and plan.service_action == "update" and len(_revisions(ecs)) == 1

    done = ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(newer))
    assert done.task_definition_arn.endswith("task-definition/modelpack:2")
    service = ecs.describe_services(cluster="modelpack", services=["modelpack"])["services"][0]
    assert service["taskDefinition"] == done.task_definition_arn
    assert ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(newer)).service_action == "none"
    assert len(_revisions(ecs)) == 2


def test_code_deploy_service_is_not_rolled_by_update_service(aws):
    ecs, variables = aws
    definitions = ecs_deploy.load_definitions(variables)
    arn = ecs_deploy.register(ecs, definitions.task, "0" * 64)
    ecs.create_service(
        cluster="modelpack",
        serviceName="modelpack",
        taskDefinition=arn,
        desiredCount=2,
        launchType="FARGATE",
        deploymentController={"type": "CODE_DEPLOY"},
        networkConfiguration=definitions.service["networkConfiguration"],
    )
    with pytest.raises(InvalidArgument, match="blue/green.*--register-only.*CodeDeploy deployment"):
        ecs_deploy.deploy(ecs, definitions)
    registered = ecs_deploy.deploy(ecs, definitions, register_only=True)
    assert registered.register and registered.task_definition_arn.endswith(":2")
    service = ecs.describe_services(cluster="modelpack", services=["modelpack"])["services"][0]
    assert service["taskDefinition"] == arn  # left for CodeDeploy to shift


def test_cli_dry_run_prints_the_plan(aws, capsys):
    ecs, variables = aws
    argv = ["--dry-run"] + [f"--var={k}={v}" for k, v in variables.items()]
    assert ecs_deploy.main(argv, ecs=ecs, environ={}) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True and plan["service_action"] == "create" and plan["register"] is True
    assert _revisions(ecs) == []


def test_cli_reports_a_bad_definition_before_calling_aws(capsys):
    argv = [f"--var={k}={v}" for k, v in BASE_VARS.items()] + ["--var", "BENTO_IMAGE=example/bento"]
    # No ECS client and no credentials: validation must fail first.
    assert ecs_deploy.main(argv, environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task-definition.json + service.json: 1 problem(s):")
    assert "(bento).image: 'example/bento' has no tag" in err


def test_cli_rejects_a_malformed_var(capsys):
    assert ecs_deploy.main(["--validate-only", "--var", "triton_image"], environ={}) == 2
    assert "--var: 'triton_image' is not NAME=VALUE" in capsys.readouterr().err


def test_cli_validate_only_prints_rendered_definitions(capsys):
    argv = ["--validate-only", "--variant", "gpu"]
    assert ecs_deploy.main(argv, environ=dict(BASE_VARS)) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert rendered["taskDefinition"]["requiresCompatibilities"] == ["EC2"]
    assert rendered["service"]["cluster"] == "modelpack"


@pytest.mark.parametrize("form", ["script", "module"])
def test_runs_from_the_command_line_without_aws(form, tmp_path):
    """`python deploy/ecs/deploy.py` and `python -m deploy.ecs.deploy`, from a bare environment."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(ecs_deploy.__file__).resolve().parents[2]
    entry = [str(root / "deploy" / "ecs" / "deploy.py")] if form == "script" else ["-m", "deploy.ecs.deploy"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **BASE_VARS}
    done = subprocess.run(
        [sys.executable, *entry, "--validate-only"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["taskDefinition"]["family"] == "modelpack"

    env.pop("BENTO_IMAGE")
    done = subprocess.run(
        [sys.executable, *entry], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        "error: 1 variable(s) not set:\n- BENTO_IMAGE (used at task-definition.json:"
    )


def test_gpu_variant_registers_and_creates_an_ec2_service(aws):
    ecs, variables = aws
    plan = ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables, variant="gpu"))
    assert plan.register and plan.service_action == "create"
    registered = ecs.describe_task_definition(taskDefinition=plan.task_definition_arn)["taskDefinition"]
    triton = next(c for c in registered["containerDefinitions"] if c["name"] == "triton")
    assert triton["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert triton["linuxParameters"]["sharedMemorySize"] == 1024
    service = ecs.describe_services(cluster="modelpack", services=["modelpack"])["services"][0]
    assert service["launchType"] == "EC2"


# ---- every key compared --------------------------------------------------------------------------


def test_network_and_load_balancer_changes_are_planned_and_sent(aws):
    ecs, variables = aws
    ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables))
    import boto3

    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.describe_subnets(SubnetIds=[variables["SUBNETS"].split(",")[0]])["Subnets"][0]["VpcId"]
    other = ec2.create_security_group(GroupName="other", Description="other", VpcId=vpc)["GroupId"]
    changed = ecs_deploy.load_definitions({**variables, "SECURITY_GROUPS": other})
    plan = ecs_deploy.deploy(ecs, changed, dry_run=True)
    assert plan.service_action == "update" and plan.updates == ["networkConfiguration"]
    assert any(r.startswith("service: networkConfiguration:") and other in r for r in plan.reasons)
    done = ecs_deploy.deploy(ecs, changed)
    service = ecs.describe_services(cluster="modelpack", services=["modelpack"])["services"][0]
    assert service["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"] == [other]
    assert done.rollout["state"] == "COMPLETED"

    moved = ecs_deploy.load_definitions(variables)
    moved.service["loadBalancers"][0]["containerPort"] = 3000
    moved.service["healthCheckGracePeriodSeconds"] = 300
    assert ecs_deploy.deploy(ecs, moved, dry_run=True).updates == ["networkConfiguration"]  # back to sg-1
    moved.service["loadBalancers"][0]["targetGroupArn"] = variables["TARGET_GROUP_ARN"] + "x"
    plan = ecs_deploy.deploy(ecs, moved, dry_run=True)
    assert plan.updates == ["loadBalancers", "networkConfiguration"]


def test_keys_ecs_does_not_report_are_listed_not_ignored(aws):
    ecs, variables = aws
    definitions = ecs_deploy.load_definitions(variables)
    ecs_deploy.deploy(ecs, definitions)
    plan = ecs_deploy.deploy(ecs, definitions, dry_run=True)
    # moto reports neither the deployment configuration it was created with nor the grace period.
    assert plan.service_action == "none"
    assert (
        "deploymentConfiguration" in plan.not_compared
        and "healthCheckGracePeriodSeconds" in plan.not_compared
    )


def test_a_launch_type_change_is_refused_with_the_way_to_make_it(aws):
    ecs, variables = aws
    ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables))
    with pytest.raises(InvalidArgument) as caught:
        ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables, variant="gpu"), dry_run=True)
    message = str(caught.value)
    assert message.startswith('service launchType: "FARGATE" -> "EC2"; UpdateService cannot change')
    assert "capacityProviderStrategy" in message


# ---- waiting for the deployment ------------------------------------------------------------------


def _moto_service():
    from moto.ecs.models import ecs_backends

    return ecs_backends["123456789012"][REGION].services["modelpack:modelpack"]


def test_waits_until_the_new_deployment_completes(aws, monkeypatch):
    ecs, variables = aws
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "0")  # tasks not started yet: IN_PROGRESS
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 2:  # ECS starts the tasks: the deployment completes
            deployment = _moto_service().deployments[0]
            deployment.update(rolloutState="COMPLETED", rolloutStateReason="ECS deployment completed.")

    done = ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables), poll_s=7, sleep=sleep)
    assert polls == [7, 7]
    assert done.rollout["state"] == "COMPLETED" and done.rollout["id"].startswith("ecs-svc/")


def test_a_rolled_back_deployment_fails_the_deploy(aws):
    """The circuit breaker's rollback: ECS marks the new deployment FAILED... or replaces it with a new
    PRIMARY deployment of the previous revision, which services-stable would report as success."""
    ecs, variables = aws
    first = ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables))
    newer = dict(variables, BENTO_IMAGE=variables["BENTO_IMAGE"].replace(":0.1.0", ":0.1.1"))

    def roll_back(seconds):
        service = _moto_service()
        ours = service.deployments[0]
        ours.update(
            status="ACTIVE", rolloutState="FAILED", rolloutStateReason="circuit breaker: tasks failed"
        )
        service.deployments.insert(
            0,
            {
                **ours,
                "id": "ecs-svc/rollback",
                "status": "PRIMARY",
                "taskDefinition": first.task_definition_arn,
                "rolloutState": "IN_PROGRESS",
                "rolloutStateReason": "ECS deployment circuit breaker: rolling back to the last good one.",
            },
        )

    _moto_service().deployments[0].update(rolloutState="IN_PROGRESS")  # the update's deployment, going
    with pytest.raises(ecs_deploy.PublishError) as caught:
        ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(newer), sleep=roll_back)
    message = str(caught.value)
    assert (
        "was rolled back: ECS now deploys arn:aws:ecs:us-east-1:123456789012:task-definition/modelpack:1"
        in message
    )
    assert "circuit breaker" in message


def test_a_failed_deployment_fails_the_deploy(aws, monkeypatch):
    ecs, variables = aws
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "0")

    def fail(seconds):
        _moto_service().deployments[0].update(
            rolloutState="FAILED", rolloutStateReason="tasks failed to start"
        )

    with pytest.raises(
        ecs_deploy.PublishError, match=r"deployment ecs-svc/\d+ FAILED: tasks failed to start"
    ):
        ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables), sleep=fail)


def test_a_slow_deployment_times_out_naming_its_state(aws, monkeypatch):
    ecs, variables = aws
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "0")
    with pytest.raises(ecs_deploy.Unavailable, match=r"is still IN_PROGRESS after 0 s .*--wait-timeout"):
        ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables), wait_timeout_s=0, sleep=lambda s: None)
    plan = ecs_deploy.deploy(ecs, ecs_deploy.load_definitions(variables), wait=False)
    assert plan.rollout is None and plan.service_action == "none"


def _stubbed_ecs(statuses: list[dict]):
    """A real botocore ECS client whose DescribeServiceDeployments answers come from ``statuses`` (moto
    does not implement the call); Stubber checks each request and answer against ECS's API model."""
    import boto3
    from botocore.stub import Stubber

    ecs = boto3.client("ecs", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(ecs)
    for status in statuses:
        stubber.add_response(
            "describe_service_deployments",
            {"serviceDeployments": [{"serviceDeploymentArn": ARN, **status}], "failures": []},
            {"serviceDeploymentArns": [ARN]},
        )
    stubber.activate()
    return ecs, stubber


ARN = "arn:aws:ecs:us-east-1:123456789012:service-deployment/modelpack/modelpack/abc"
ANSWER = {
    "clusterArn": "arn:aws:ecs:us-east-1:123456789012:cluster/modelpack",
    "serviceName": "modelpack",
    "currentServiceDeployment": ARN,
}


def test_service_deployment_status_decides_where_ecs_reports_one():
    """ECS's own canary (and any deployment ECS names in currentServiceDeployment): its status."""
    ecs, stubber = _stubbed_ecs(
        [
            {"status": "IN_PROGRESS", "statusReason": "canary 10 %"},
            {"status": "SUCCESSFUL", "statusReason": "done"},
        ]
    )
    done = ecs_deploy.wait_for_rollout(ecs, ANSWER, sleep=lambda s: None)
    assert done == {"id": ARN, "state": "SUCCESSFUL", "reason": "done"}
    stubber.assert_no_pending_responses()


def test_service_deployment_rollback_fails_naming_the_revision():
    rollback = {
        "reason": "alarm modelpack-bento-5xx in ALARM",
        "serviceRevisionArn": "arn:aws:ecs:us-east-1:123456789012:service-revision/modelpack/modelpack/1",
    }
    ecs, _ = _stubbed_ecs([{"status": "ROLLBACK_SUCCESSFUL", "rollback": rollback}])
    with pytest.raises(ecs_deploy.PublishError) as caught:
        ecs_deploy.wait_for_rollout(ecs, ANSWER, sleep=lambda s: None)
    assert "ended ROLLBACK_SUCCESSFUL: alarm modelpack-bento-5xx in ALARM" in str(caught.value)
    assert (
        "ECS rolled back to arn:aws:ecs:us-east-1:123456789012:service-revision/modelpack/modelpack/1"
        in str(caught.value)
    )


def test_cli_refuses_a_wait_timeout_of_zero(capsys):
    argv = [f"--var={k}={v}" for k, v in BASE_VARS.items()] + ["--wait-timeout", "0"]
    assert ecs_deploy.main(argv, environ={}) == 2
    assert "--wait-timeout: 0 must be > 0 (or pass --no-wait)" in capsys.readouterr().err
