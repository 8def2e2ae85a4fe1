#!/usr/bin/env python3
"""What a schema cannot see in rendered kurz manifests: that they agree with the binaries.

Usage: k8s_rules.py RENDERED.yaml NAME   (run from the repository root by deploy/checks/k8s.sh)

Each rule reads what the binaries accept from their sources (config loaders, `main.rs`, the
health routes) or from conf/, so a renamed variable, subcommand or route fails here instead of
in a crash-looping pod:
- every environment variable a container sets is one its binary reads;
- each subcommand and flag exists, and the config file named is in the mounted ConfigMap;
- every config file in a ConfigMap uses only keys of conf/'s file of the same name;
- listeners, container ports, probes, Services, scrape annotations and the NetworkPolicy agree;
- the edge's TLS certificate and key are files of a mounted Secret;
- security contexts: non-root, read-only root, no privilege escalation, every capability
  dropped, NET_BIND_SERVICE only for a binary that binds a port below 1024;
- the Secrets and keys the pods need are the ones docs/kubernetes.md tells an operator to create;
- the autoscalers own the replica counts, and every selector selects something.
"""
import glob
import re
import sys

import yaml

RENDERED, WHERE = sys.argv[1], sys.argv[2]
errors = []


def fail(msg):
    errors.append(f"{WHERE}: {msg}")


def read(*patterns):
    return "".join(open(f).read() for p in patterns for f in sorted(glob.glob(p)))


# --- what the binaries accept, from their sources -------------------------------------------
ENV_READ = re.compile(r'(?:\.get\(\s*|(?:parse|list)_var\(\s*env\s*,\s*|env\s*=\s*)"([A-Z][A-Z0-9_]+)"')
API_SRC = read("api/src/config/*.rs", "api/src/main.rs")
PROXY_SRC = read("proxy/src/config/*.rs", "proxy/src/main.rs")
BINARIES = {
    "kurz-api": {
        "env": set(ENV_READ.findall(API_SRC)),
        # clap names a subcommand after its variant in kebab case.
        "subcommands": {
            re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower()
            for v in re.findall(
                r"^    (\w+)\b", re.search(r"enum Command \{(.*?)\n\}", API_SRC, re.S).group(1), re.M
            )
        },
        "conf": "conf/api.yaml",
        # The routes answered by the health handlers, on the public listener.
        "health": set(re.findall(r'\.route\("([^"]+)",\s*get\(health::', read("api/src/routes/mod.rs"))),
        "listeners": {"KURZ_LISTEN": "listen", "KURZ_ADMIN_LISTEN": "admin_listen"},
        "probe_listener": "KURZ_LISTEN",
        "metrics_listener": "KURZ_ADMIN_LISTEN",
    },
    "kurz-proxy": {
        "env": set(ENV_READ.findall(PROXY_SRC)),
        "subcommands": set(),
        "conf": "conf/proxy.yaml",
        "health": set(re.findall(r'"(/health[^"]*|/ready)"', read("proxy/src/admin.rs"))),
        "listeners": {"KURZ_PROXY_HTTP": "listen.http", "KURZ_PROXY_HTTPS": "listen.https",
                      "KURZ_PROXY_ADMIN": "admin.listen"},
        "probe_listener": "KURZ_PROXY_ADMIN",
        "metrics_listener": "KURZ_PROXY_ADMIN",
    },
}
for name, b in BINARIES.items():
    assert b["env"] and b["health"], f"cannot read {name}'s variables or health routes from its sources"
assert 'long = "config"' in API_SRC and 'long = "config"' in PROXY_SRC, "a binary lost --config"


def key_paths(node, prefix=""):
    """Dotted paths of every mapping key (lists are values, not descended into)."""
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}{k}"
            out.add(path)
            out |= key_paths(v, path + ".")
    return out


def dig(node, dotted):
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


# --- the rendered objects --------------------------------------------------------------------
docs = [d for d in yaml.safe_load_all(open(RENDERED)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

config_maps = by_kind.get("ConfigMap", {})
for cm_name, cm in config_maps.items():
    for key, text in (cm.get("data") or {}).items():
        conf = f"conf/{key}"
        if not glob.glob(conf):
            continue
        extra = key_paths(yaml.safe_load(text)) - key_paths(yaml.safe_load(open(conf)))
        if extra:
            fail(f"ConfigMap {cm_name} {key}: keys not in {conf}: {sorted(extra)}")

docs_k8s = open("docs/kubernetes.md").read()
documented_secrets = set(re.findall(r"create secret (?:generic|tls) ([a-z0-9-]+)", docs_k8s))
documented_keys = set(re.findall(r"--from-literal=([A-Z_]+)=", docs_k8s))

workloads = [d for k in ("Deployment", "Job") for d in by_kind.get(k, {}).values()]
pod_labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"].get("labels", {}) for d in workloads}


def selects(selector):
    return [n for n, labels in pod_labels.items() if selector and selector.items() <= labels.items()]


def port_names(workload):
    """Named container ports of a workload's pods."""
    w = next(w for w in workloads if w["metadata"]["name"] == workload)
    return {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}


for w in workloads:
    wname = w["metadata"]["name"]
    pod = w["spec"]["template"]["spec"]
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        fail(f"{wname}: runAsNonRoot is not set")
    mounts_to_volume = {v["name"]: v for v in pod.get("volumes", [])}
    for v in pod.get("volumes", []):
        if "secret" in v and v["secret"]["secretName"] not in documented_secrets:
            fail(f"{wname}: Secret {v['secret']['secretName']} is not among those docs/kubernetes.md creates")
    for c in pod["containers"]:
        where = f"{wname}/{c['name']}"
        binary = c.get("command", [""])[0]
        b = BINARIES.get(binary)
        if b is None:
            fail(f"{where}: command {c.get('command')} runs neither kurz-api nor kurz-proxy")
            continue
        args = c["command"][1:]
        if binary == "kurz-api" and (not args or args[0] not in b["subcommands"]):
            fail(f"{where}: kurz-api has no subcommand {args[:1]} (it has {sorted(b['subcommands'])})")
        # The config file: named by --config/-c, present in a ConfigMap mounted at its directory.
        path = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-c", "--config")), None)
        if path is None:
            fail(f"{where}: no --config (the binary would look for conf/ in the image's working directory)")
            continue
        conf_text = None
        for m in c.get("volumeMounts", []):
            vol = mounts_to_volume.get(m["name"], {})
            if "configMap" in vol and path.startswith(m["mountPath"].rstrip("/") + "/"):
                cm = next((cm for n, cm in config_maps.items() if n == vol["configMap"]["name"]), None)
                conf_text = (cm or {}).get("data", {}).get(path[len(m["mountPath"].rstrip("/")) + 1:])
        if conf_text is None:
            fail(f"{where}: {path} is not a key of a ConfigMap mounted there")
            continue
        conf = yaml.safe_load(conf_text)

        env = {e["name"]: e for e in c.get("env", [])}
        for name in env:
            if name not in b["env"]:
                fail(f"{where}: {binary} does not read ${name}")
        for name, e in env.items():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                if ref["name"] not in documented_secrets:
                    fail(f"{where}: Secret {ref['name']} is not among those docs/kubernetes.md creates")
                if not ref.get("optional") and ref["key"] not in documented_keys:
                    fail(f"{where}: required key {ref['key']} of Secret {ref['name']} is not in docs/kubernetes.md")

        sc = c.get("securityContext", {})
        if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: needs readOnlyRootFilesystem and allowPrivilegeEscalation: false")
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"]:
            fail(f"{where}: capabilities must drop ALL")
        res = c.get("resources", {})
        if "cpu" not in res.get("requests", {}) or "memory" not in res.get("limits", {}):
            fail(f"{where}: needs a CPU request and a memory limit")
        if binary == "kurz-api" and args[0] != "serve":
            continue  # migrate, check: no listener

        # The grace period must cover the preStop sleep and the drain the config allows
        # (docs/kubernetes.md, "Shutdown"), or the kubelet kills what is still finishing.
        # A key the ConfigMap leaves out takes the binary's default.
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        pre_s = 0
        if pre is not None:
            if len(pre) != 2 or pre[0].rsplit("/", 1)[-1] != "sleep" or not str(pre[1]).isdigit():
                fail(f"{where}: preStop {pre} is not `sleep <seconds>`, which this check can read")
            else:
                pre_s = int(pre[1])
        setting = lambda key, default: default if dig(conf, key) is None else dig(conf, key)
        if binary == "kurz-api":
            drain = setting("limits.bulk_request_timeout_ms", 300_000) / 1000
        else:
            drain = setting("server.grace_period_seconds", 5) \
                + setting("server.graceful_shutdown_timeout_seconds", 10)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if grace < pre_s + drain:
            fail(f"{where}: terminationGracePeriodSeconds {grace} is below preStop {pre_s} s + drain {drain:g} s")

        # Listeners: the environment wins over the file (docs/configuration.md).
        listen = {}
        for var, key in b["listeners"].items():
            value = env[var].get("value") if var in env else dig(conf, key)
            values = value.split(",") if isinstance(value, str) else (value or [])
            listen[var] = [port_of(v) for v in values if v]
        low = sorted(p for ps in listen.values() for p in ps if p < 1024)
        wants_bind = "NET_BIND_SERVICE" in (caps.get("add") or [])
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(f"{where}: adds capabilities beyond NET_BIND_SERVICE: {caps['add']}")
        if low and not wants_bind:
            fail(f"{where}: binds ports {low} below 1024 without NET_BIND_SERVICE")
        if wants_bind and not low:
            fail(f"{where}: adds NET_BIND_SERVICE but binds no port below 1024")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for p in ports.values():
            if not any(p in ps for ps in listen.values()):
                fail(f"{where}: containerPort {p} is no listener of {binary}")

        probe_port = (listen[b["probe_listener"]] or [None])[0]
        admin = env.get(b["metrics_listener"], {}).get("value") or dig(conf, b["listeners"][b["metrics_listener"]])
        for var in (b["probe_listener"], b["metrics_listener"]):
            addr = env[var].get("value") if var in env else dig(conf, b["listeners"][var])
            if str(addr).startswith(("127.", "[::1]", "localhost")):
                fail(f"{where}: {var} {addr} is loopback: kubelet and Prometheus cannot reach it")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if not probe:
                if kind != "startupProbe":
                    fail(f"{where}: no {kind}")
                continue
            http = probe.get("httpGet", {})
            port = http.get("port")
            port = ports.get(port) if isinstance(port, str) else port
            if http.get("path") not in b["health"]:
                fail(f"{where}: {kind} path {http.get('path')} is not a health route of {binary} ({sorted(b['health'])})")
            if port != probe_port:
                fail(f"{where}: {kind} port {http.get('port')} is not the listener serving health ({probe_port})")
        ann = w["spec"]["template"]["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/path") != "/metrics" \
                or int(ann.get("prometheus.io/port", 0)) != port_of(admin):
            fail(f"{where}: Prometheus annotations must name /metrics on {admin}")

        if binary == "kurz-proxy" and listen["KURZ_PROXY_HTTPS"]:
            # TLS listeners refuse to start without the pair: both files in a mounted Secret.
            for var, key in (("KURZ_TLS_CERT", "listen.tls_cert"), ("KURZ_TLS_KEY", "listen.tls_key")):
                file = env[var].get("value") if var in env else dig(conf, key)
                mount = next((m for m in c.get("volumeMounts", []) if "secret" in mounts_to_volume.get(m["name"], {})
                              and str(file).startswith(m["mountPath"].rstrip("/") + "/")), None)
                if mount is None or "/" in file[len(mount["mountPath"].rstrip("/")) + 1:]:
                    fail(f"{where}: {var} {file!r} is not a file of a mounted Secret")

        if binary == "kurz-proxy":
            # upstreams.servers takes addresses: the API Service's variables, set in the pod.
            up = env.get("KURZ_UPSTREAMS", {}).get("value", "")
            m = re.fullmatch(r"\$\(([A-Z0-9_]+)_SERVICE_HOST\):\$\(\1_SERVICE_PORT\)", up)
            svc = by_kind.get("Service", {}).get(m.group(1).lower().replace("_", "-")) if m else None
            if not svc:
                fail(f"{where}: KURZ_UPSTREAMS {up!r} does not name a Service's variables")
            elif selects(svc["spec"]["selector"]) != ["kurz-api"]:
                fail(f"{where}: KURZ_UPSTREAMS names Service {svc['metadata']['name']}, which does not select the API")

# Services, budgets, policies and autoscalers select or target something.
for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
    for name, d in by_kind.get(kind, {}).items():
        sel = d["spec"].get("selector") or d["spec"].get("podSelector") or {}
        sel = sel.get("matchLabels", sel) if kind != "Service" else sel
        if not selects(sel):
            fail(f"{kind} {name}: selects no pods")
for name, d in by_kind.get("Service", {}).items():
    targets = {p for w in selects(d["spec"]["selector"]) for p in port_names(w)}
    for p in d["spec"]["ports"]:
        if isinstance(p.get("targetPort"), str) and p["targetPort"] not in targets:
            fail(f"Service {name}: targetPort {p['targetPort']} is no named container port")
for name, d in by_kind.get("NetworkPolicy", {}).items():
    named = {p for w in selects(d["spec"]["podSelector"].get("matchLabels", {})) for p in port_names(w)}
    for rule in d["spec"].get("ingress", []):
        for p in rule.get("ports", []):
            if isinstance(p.get("port"), str) and p["port"] not in named:
                fail(f"NetworkPolicy {name}: port {p['port']} is no named container port of its pods")
for name, d in by_kind.get("HorizontalPodAutoscaler", {}).items():
    target = d["spec"]["scaleTargetRef"]["name"]
    dep = by_kind.get("Deployment", {}).get(target)
    if not dep:
        fail(f"HorizontalPodAutoscaler {name}: no Deployment {target}")
    elif "replicas" in dep["spec"]:
        fail(f"Deployment {target}: sets replicas, which every apply resets under its autoscaler")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
