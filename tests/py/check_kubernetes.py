#!/usr/bin/env python3
"""Validates packaging/kubernetes/*.yaml against the Kubernetes OpenAPI schemas bundled by the
`kubernetes-validate` package (strict: unknown fields are errors), then checks what the
DaemonSet must do for perapera: hostPath mounts (journal, pod logs and machine-id read-only,
the state directory writable), /health probes, a grace period above shutdown_timeout, the
node name passed in, resources, tolerations for every node.

Usage: check_kubernetes.py DIR [KUBERNETES_VERSION]. Exits non-zero with every problem.
"""
import glob
import os
import re
import sys
import tomllib

import kubernetes_validate
import yaml

problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


def duration_s(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not m:
        return None
    return float(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def main():
    directory = sys.argv[1]
    version = sys.argv[2] if len(sys.argv) > 2 else "1.30.0"
    docs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    problems.append(f"{path}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}: {e.message} at {list(e.path)}")
                docs.append(doc)
    kinds = {d["kind"]: d for d in docs}
    for kind in ("DaemonSet", "ServiceAccount", "ConfigMap"):
        need(kind in kinds, f"no {kind}")
    if problems:
        return report()
    ds = kinds["DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    need(pod.get("serviceAccountName") == kinds["ServiceAccount"]["metadata"]["name"], "DaemonSet does not use the ServiceAccount")
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}

    def host_mount(host, path, read_only):
        m = mounts.get(path)
        need(m is not None, f"{path} is not mounted")
        if m is None:
            return
        v = volumes.get(m["name"], {})
        need(v.get("hostPath", {}).get("path") == host, f"{path} does not come from hostPath {host}")
        need(bool(m.get("readOnly")) == read_only, f"{path} must be {'read-only' if read_only else 'writable'}")

    for p in ("/var/log/journal", "/run/log/journal", "/var/log/pods", "/etc/machine-id"):
        host_mount(p, p, True)
    host_mount("/var/lib/perapera", "/var/lib/perapera", False)

    cm = kinds["ConfigMap"]["data"]["perapera.toml"]
    config = tomllib.loads(cm)
    need(config["state"]["directory"] == "/var/lib/perapera", "the config's state directory is not the hostPath mount")
    cfg_mount = [m for m in c["volumeMounts"] if volumes[m["name"]].get("configMap")]
    need(cfg_mount and cfg_mount[0]["mountPath"] == "/etc/perapera", "the ConfigMap is not mounted at /etc/perapera")
    need("/etc/perapera/perapera.toml" in c.get("args", []), "the container does not run the mounted config")
    timeout = duration_s(config.get("pipeline", {}).get("shutdown_timeout", "25s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need(timeout is not None and grace > timeout, f"terminationGracePeriodSeconds {grace} is not above shutdown_timeout {timeout}s")

    address = config.get("metrics", {}).get("address", "127.0.0.1:9810")
    need(address.startswith("0.0.0.0:"), f"metrics address {address} is not reachable by the kubelet's probes")
    port = int(address.rsplit(":", 1)[1])
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c.get(probe, {}).get("httpGet", {})
        need(get.get("path") == "/health", f"{probe} does not GET /health")
        p = get.get("port")
        need(ports.get(p, p) == port, f"{probe} port {p} is not the metrics port {port}")

    env = {e["name"]: e for e in c.get("env", [])}
    need(env.get("PERAPERA_HOSTNAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
         "spec.nodeName is not passed in as PERAPERA_HOSTNAME")
    res = c.get("resources", {})
    need("requests" in res and "limits" in res, "resources need requests and limits")
    need({"operator": "Exists"} in pod.get("tolerations", []), "no toleration for every taint (operator: Exists)")
    sc = c.get("securityContext", {})
    need(sc.get("readOnlyRootFilesystem") is True, "root filesystem is not read-only")
    need(sc.get("allowPrivilegeEscalation") is False, "privilege escalation is allowed")
    need("ALL" in sc.get("capabilities", {}).get("drop", []), "capabilities are not all dropped")
    return report()


def report():
    for p in problems:
        print("kubernetes:", p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print("kubernetes manifests OK")


if __name__ == "__main__":
    main()
