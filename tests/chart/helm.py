"""Helm v4 for the tests, through its own Go SDK (helm-python-sdk; no helm binary).

    $HELM_PYTHON tests/chart/helm.py template CHART NAMESPACE RELEASE VALUES.json
        what `helm install --dry-run` would create: the chart's CRDs, then every template, as
        YAML documents; values checked against values.schema.json as Helm checks them
    $HELM_PYTHON tests/chart/helm.py lint CHART VALUES.json
        `helm lint --strict`: every finding, and a failure on any warning or error
    $HELM_PYTHON tests/chart/helm.py install|upgrade CHART NAMESPACE RELEASE VALUES.json
        `helm install|upgrade --wait` on the cluster KUBECONFIG names
    $HELM_PYTHON tests/chart/helm.py rollback NAMESPACE RELEASE REVISION
    $HELM_PYTHON tests/chart/helm.py uninstall NAMESPACE RELEASE
        `helm rollback|uninstall --wait`
    $HELM_PYTHON tests/chart/helm.py history NAMESPACE RELEASE
        `helm history -o json`
The release actions print the release's history as JSON: revision, status, chart_version.
"""

import json
import sys

import helm_python as helm

# Helm's lint severities: 1 info, 2 warning, 3 error.
WARNING = 2
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion), which the tests run.
OLDEST_KUBERNETES = "1.20.0"


def template(chart_dir: str, namespace: str, release: str, values: dict) -> None:
    with helm.Chart.load(chart_dir) as chart:
        try:
            chart.validate_schema(chart.merge_values(values))
        except helm.HelmValuesError as error:
            sys.exit(f"the values are refused: {error}")
        try:
            rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
        except helm.HelmRenderError as error:
            sys.exit(f"the chart cannot be rendered: {error}")
        crds = [crd["data"].strip() for crd in sorted(chart.crds, key=lambda crd: crd["filename"])]
        templates = [
            document.strip()
            for path in sorted(rendered)
            if not path.endswith("NOTES.txt")
            for document in rendered[path].split("\n---")
            if document.strip()
        ]
    print("\n---\n".join(crds + sorted(templates, key=install_order)))


# The order `helm install` creates kinds in (Helm's InstallOrder, the kinds this chart has); others last.
INSTALL_ORDER = ["Namespace", "PodDisruptionBudget", "ServiceAccount", "Secret", "ConfigMap", "CustomResourceDefinition",
                 "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"]


def install_order(document: str) -> int:
    kinds = [line.removeprefix("kind: ") for line in document.splitlines() if line.startswith("kind: ")]
    return INSTALL_ORDER.index(kinds[0]) if kinds and kinds[0] in INSTALL_ORDER else len(INSTALL_ORDER)


def lint(chart_dir: str, values: dict) -> None:
    report = helm.lint(chart_dir, values, strict=True, kube_version=OLDEST_KUBERNETES)
    findings = [f"{message['path']}: {message['error']}" for message in report["messages"] if message["severity"] >= WARNING]
    findings += [str(error) for error in report["errors"]]
    for message in report["messages"]:
        print(f"[{message['severity']}] {message['path']}: {message['error']}")
    if findings:
        sys.exit("helm lint --strict: " + "; ".join(findings))


# How long `--wait` waits for the release's Deployment to be ready, its pods to be gone.
WAIT_SECONDS = 180


def release_action(command: str, namespace: str, release: str, arguments: list[str]) -> None:
    with helm.Config(namespace=namespace) as config:
        try:
            if command in ("install", "upgrade"):
                chart_dir, values_path = arguments
                with open(values_path) as values_file:
                    values = json.load(values_file)
                action = config.install if command == "install" else config.upgrade
                action(chart_dir, release, values, wait="watcher", timeout=WAIT_SECONDS)
            elif command == "rollback":
                config.rollback(release, version=int(arguments[0]), wait="watcher", timeout=WAIT_SECONDS)
            elif command == "uninstall":
                config.uninstall(release, wait="watcher", timeout=WAIT_SECONDS)
                return
            history = config.history(release)
        except helm.HelmError as error:
            sys.exit(f"helm {command} {release}: {error}")
    print(json.dumps([{key: entry[key] for key in ("revision", "status", "chart_version")} for entry in history]))


def main() -> None:
    command, *arguments = sys.argv[1:]
    if command in ("template", "lint"):
        chart_dir, *rest = arguments
        with open(rest[-1]) as values_file:
            values = json.load(values_file)
        if command == "template":
            template(chart_dir, rest[0], rest[1], values)
        else:
            lint(chart_dir, values)
    elif command in ("install", "upgrade"):
        chart_dir, namespace, release, values_path = arguments
        release_action(command, namespace, release, [chart_dir, values_path])
    elif command in ("rollback", "uninstall", "history"):
        namespace, release, *rest = arguments
        release_action(command, namespace, release, rest)
    else:
        sys.exit(f"unknown command {command}: template, lint, install, upgrade, rollback, uninstall or history")


if __name__ == "__main__":
    main()
