"""Offline checks of the deployment definitions: what CI runs, since nothing here can be applied.

    python -m deploy.checks [--out DIR]

1. ``kubectl kustomize`` renders each overlay of ``deploy/k8s/overlays`` (cpu, gpu, canary);
2. every rendered object is validated against the Kubernetes ``KUBERNETES_VERSION`` schemas, strictly
   (unknown fields are errors), by kubernetes-validate; KEDA's ScaledObjects, which it has no schema
   for, against the structural schema and checks of ``deploy/crds.py``, and each must scale a
   Deployment of the same file;
3. checkov scans the rendered manifests and every Dockerfile under ``deploy/`` in one run; a failed
   check fails, and a skipped one must carry its reason in the file (checkov skip annotation/comment);
4. hadolint lints every Dockerfile under ``deploy/``;
5. the dashboard and alert rules of ``deploy/observability/``: ``promtool check rules`` and ``promtool test
   rules`` (alerts.test.yaml: synthetic series, the alerts that must and must not fire) on the rules; the
   dashboard's JSON checked (unique panel ids, the datasource variable, a grid of 24 columns) and every
   one of its queries parsed by promtool (as recording rules of a scratch file).

Each check returns a ``CheckResult``; ``main`` prints one line per check and exits 1 if any failed.
Tools: kubectl (the machine's, else ``.venv-checkov/bin/kubectl``), checkov in ``.venv-checkov/``,
hadolint and kubernetes-validate in the main venv, promtool from Debian's ``prometheus`` package (``make
setup`` installs them all).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import CheckFailed, MissingDependency, NotFound
from deploy import crds

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS_DIR = DEPLOY / "k8s" / "overlays"
OVERLAYS = ("cpu", "gpu", "canary")
# The Kubernetes version the manifests are validated against (EKS 1.32; kubectl 1.32 renders them).
KUBERNETES_VERSION = "1.32.0"
CHECKOV_VENV = ROOT / ".venv-checkov"
OBSERVABILITY = DEPLOY / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yaml"
ALERT_TESTS = OBSERVABILITY / "alerts.test.yaml"


@dataclass
class CheckResult:
    """One check over one or more files: passed, and a line per problem found."""

    name: str
    passed: bool
    problems: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    duration_s: float = 0.0

    def line(self) -> str:
        status = "ok" if self.passed else "FAILED"
        head = f"{status:6} {self.name} ({self.duration_s:.1f} s)"
        return "\n".join([head] + [f"       - {p}" for p in self.problems])


def dockerfiles() -> list[Path]:
    """Every Dockerfile under deploy/ (``Dockerfile``, ``*.Dockerfile``)."""
    found = [p for p in DEPLOY.rglob("*") if p.is_file() and _is_dockerfile(p)]
    return sorted(found)


def _is_dockerfile(path: Path) -> bool:
    return path.name == "Dockerfile" or path.name.endswith(".Dockerfile")


def _tool(name: str, *candidates: Path) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise MissingDependency(
        f"{name}: not found on PATH nor in {', '.join(map(str, candidates))}; run `make setup`"
    )


def kubectl() -> str:
    return _tool("kubectl", CHECKOV_VENV / "bin" / "kubectl")


def checkov() -> str:
    binary = CHECKOV_VENV / "bin" / "checkov"
    if not binary.is_file():
        raise MissingDependency(f"checkov: {binary} is missing; run `make setup` (it builds .venv-checkov/)")
    return str(binary)


def hadolint() -> str:
    return _tool("hadolint", Path(sys.executable).parent / "hadolint", ROOT / ".venv" / "bin" / "hadolint")


def render(overlay: str | Path) -> str:
    """``kubectl kustomize`` of an overlay (a name under deploy/k8s/overlays, or a folder)."""
    path = Path(overlay) if Path(overlay).is_absolute() else OVERLAYS_DIR / str(overlay)
    if not (path / "kustomization.yaml").is_file():
        known = ", ".join(sorted(p.name for p in OVERLAYS_DIR.iterdir() if p.is_dir()))
        raise NotFound(
            f"overlay {overlay!r}: no kustomization.yaml in {path} (overlays: {known})", field="overlay"
        )
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise CheckFailed(f"kubectl kustomize {path}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def render_all(out_dir: Path, overlays: Iterable[str] = OVERLAYS) -> dict[str, Path]:
    """Render each overlay to ``out_dir/<overlay>.yaml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for overlay in overlays:
        paths[overlay] = out_dir / f"{overlay}.yaml"
        paths[overlay].write_text(render(overlay), encoding="utf-8")
    return paths


def load_documents(path: Path) -> list[dict]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def validate_manifests(path: Path, version: str = KUBERNETES_VERSION) -> CheckResult:
    """kubernetes-validate, strict, on every object of a rendered file (KEDA's: deploy/crds.py)."""
    import kubernetes_validate

    start = time.perf_counter()
    problems, kinds = [], []
    docs = load_documents(path)
    deployments = {d["metadata"]["name"] for d in docs if d.get("kind") == "Deployment"}
    for doc in docs:
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        kinds.append(name)
        if crds.is_scaled_object(doc):
            found = crds.scaled_object_problems(doc, version)
            target = ((doc.get("spec") or {}).get("scaleTargetRef") or {}).get("name")
            if not found and target not in deployments:
                found.append(f"spec.scaleTargetRef.name: {target!r} is not a Deployment of this file")
            problems.extend(f"{path.name}: {name}: {p}" for p in found)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path) or "(top level)"
            problems.append(f"{path.name}: {name}: {where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"{path.name}: {name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes "
                f"{version}; a custom resource needs its check in deploy/crds.py"
            )
    return CheckResult(
        name=f"kubernetes-validate --strict -k {version} {path.name}",
        passed=not problems,
        problems=problems,
        details={"objects": kinds},
        duration_s=time.perf_counter() - start,
    )


def run_checkov(files: Iterable[Path]) -> CheckResult:
    """One checkov run over rendered manifests and Dockerfiles; failures and reasonless skips fail."""
    files = list(files)
    start = time.perf_counter()
    command = [checkov(), "--skip-download", "--framework", "kubernetes", "dockerfile", "-o", "json"]
    for path in files:
        command += ["-f", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    try:
        reports = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise CheckFailed(
            f"checkov printed no JSON report (exit {done.returncode}): {done.stderr[-2000:]}"
        ) from None
    reports = reports if isinstance(reports, list) else [reports]
    problems, summary = [], {}
    for report in reports:
        kind = report.get("check_type", "?")
        summary[kind] = report.get("summary", {})
        results = report.get("results", {})
        for failed in results.get("failed_checks", []):
            problems.append(
                f"{kind}: {failed['check_id']} {failed['check_name']} in {Path(failed['file_path']).name} "
                f"({failed.get('resource')})"
            )
        for skipped in results.get("skipped_checks", []):
            reason = (skipped.get("check_result") or {}).get("suppress_comment") or ""
            if not reason.strip() or reason.strip() == "No comment provided":
                problems.append(
                    f"{kind}: {skipped['check_id']} skipped without a reason in {skipped.get('resource')}"
                )
        for error in results.get("parsing_errors", []) if isinstance(results, dict) else []:
            problems.append(f"{kind}: could not parse {error}")
    if not any(s.get("resource_count") for s in summary.values()):
        problems.append(f"checkov scanned no resource in {', '.join(p.name for p in files)}")
    return CheckResult(
        name=f"checkov on {len(files)} file(s)",
        passed=not problems,
        problems=problems,
        details={"summary": summary},
        duration_s=time.perf_counter() - start,
    )


def run_hadolint(dockerfile: Path) -> CheckResult:
    start = time.perf_counter()
    done = subprocess.run(
        [hadolint(), "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=120
    )
    try:
        findings = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        findings = [{"line": 0, "code": "hadolint", "message": (done.stderr or done.stdout).strip()}]
    problems = [f"{dockerfile.name}:{f.get('line')}: {f.get('code')} {f.get('message')}" for f in findings]
    return CheckResult(
        name=f"hadolint {dockerfile.relative_to(ROOT) if dockerfile.is_relative_to(ROOT) else dockerfile}",
        passed=done.returncode == 0 and not problems,
        problems=problems,
        duration_s=time.perf_counter() - start,
    )


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    raise MissingDependency(
        "promtool: not found on PATH; install Debian's prometheus package (apt-get install prometheus; "
        "`make setup` does, as root)"
    )


# ---- PromQL: the series a query reads -------------------------------------------------------------------

# Words of PromQL that are not series names (aggregations and functions are recognised by the "(" after
# them; these are the ones that may stand without one).
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
_PROMQL_WORDS |= {"unless", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (``x_bucket``, ``x_sum`` as written), for checking
    that each is exported: strings, label matchers, ranges and grouping lists removed, then every word
    that is neither a function call nor a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' own panels included."""
    data = json.loads(path.read_text(encoding="utf-8"))
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(data.get("panels", []))
    return found


def alert_queries(path: Path = ALERTS) -> list[tuple[str, str]]:
    """(alert name, PromQL) of every rule of the rules file."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        (rule.get("alert") or rule.get("record"), rule["expr"])
        for group in data["groups"]
        for rule in group["rules"]
    ]


# Grafana's variables in the dashboard's queries, as values promtool can parse.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*"}


def check_rules(rules: Path = ALERTS, tests: Path = ALERT_TESTS) -> CheckResult:
    """``promtool check rules`` and ``promtool test rules`` (run in the tests' folder, as they name the
    rules file relative to it)."""
    start = time.perf_counter()
    problems = []
    for argv, cwd in (
        ([promtool(), "check", "rules", str(rules)], None),
        ([promtool(), "test", "rules", tests.name], tests.parent),
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            problems.append(f"{' '.join(argv[1:3])} {argv[-1]}: " + " | ".join(output.splitlines()[-12:]))
    return CheckResult(
        name=f"promtool check rules + test rules {rules.name}",
        passed=not problems,
        problems=problems,
        duration_s=time.perf_counter() - start,
    )


def check_dashboard(path: Path = DASHBOARD) -> CheckResult:
    """The dashboard's JSON: panels with unique ids on a 24-column grid, every query on the
    ``${datasource}`` variable, and every query parsed by promtool."""
    import yaml

    start = time.perf_counter()
    problems = []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return CheckResult(f"dashboard {path.name}", False, [f"{path.name}: not JSON: {err}"])
    ids, panels = [], []

    def walk(items: list[dict]) -> None:
        for panel in items:
            panels.append(panel)
            walk(panel.get("panels", []))

    walk(data.get("panels", []))
    for panel in panels:
        title = panel.get("title", "?")
        ids.append(panel.get("id"))
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > 24:
            problems.append(f"{title}: gridPos {grid} is not inside the 24-column grid")
        for target in panel.get("targets", []):
            if (target.get("datasource") or panel.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(
                    f"{title}: target {target.get('refId')} is not on the ${{datasource}} variable"
                )
    duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if duplicates:
        problems.append(f"panel ids used more than once: {duplicates}")
    queries = dashboard_queries(path)
    if not queries:
        problems.append(f"{path.name}: no query in any panel")
    rules = []
    for number, (title, expr) in enumerate(queries):
        for variable, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if "$" in expr:
            problems.append(f"{title}: a Grafana variable the check does not know in {expr!r}")
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    with tempfile.TemporaryDirectory(prefix="dashboard-") as tmp:
        scratch = Path(tmp) / "dashboard-queries.yaml"
        scratch.write_text(
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
        )
        done = subprocess.run(
            [promtool(), "check", "rules", str(scratch)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            for line in (done.stdout + done.stderr).splitlines():
                match = re.search(r"dashboard:query_(\d+)", line)
                where = queries[int(match.group(1))][0] if match else "?"
                if "error" in line.lower() or match:
                    problems.append(f"{where}: {line.strip()}")
            problems = problems or [f"promtool check rules: {(done.stdout + done.stderr).strip()[-500:]}"]
    return CheckResult(
        name=f"dashboard {path.name} ({len(panels)} panels, {len(queries)} queries parsed by promtool)",
        passed=not problems,
        problems=problems,
        details={"queries": len(queries)},
        duration_s=time.perf_counter() - start,
    )


def run_all(out_dir: Path) -> list[CheckResult]:
    rendered = render_all(out_dir)
    results = [validate_manifests(path) for path in rendered.values()]
    files = dockerfiles()
    results.append(run_checkov([*rendered.values(), *files]))
    results.extend(run_hadolint(path) for path in files)
    results.append(check_rules())
    results.append(check_dashboard())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.checks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="keep the rendered manifests in this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.out is not None:
            results = run_all(args.out)
        else:
            with tempfile.TemporaryDirectory(prefix="deploy-checks-") as tmp:
                results = run_all(Path(tmp))
    except (CheckFailed, MissingDependency, NotFound) as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    for result in results:
        print(result.line())
    failed = [r for r in results if not r.passed]
    print(f"deploy checks: {len(results) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
