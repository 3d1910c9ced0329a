"""The project's images, built for real on this machine and pushed to the cluster's registry.

No container registry outside this machine is reachable, and HTTPS from inside a
build meets a proxy the image does not trust. So the base image is Debian made by
debootstrap and `docker import`ed, every Python package comes from a wheelhouse
downloaded on the host, and builds run with no network. The Docker engine is
Debian's `docker.io`, started here by hand with its own data folder, no bridge
and no iptables rules: builds need no network, and nothing it starts listens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cluster.node import REGISTRY, ClusterError, Node, docker_process
from cluster.oci_push import RegistryCredentials
from cluster.versions import pinned

BASE_IMAGE = "dogs-cats-base:bookworm"
# Debian packages of the base: Python 3.11 (the venvs), its shared library (the python
# backend's stub links it), libstdc++ (tritonserver), libgomp (ONNX Runtime).
BASE_PACKAGES = "python3,python3-venv,libpython3.11,libstdc++6,libgomp1,ca-certificates"
# The image builder's base: runc for BuildKit's build steps, uidmap for RootlessKit, setcap
# (libcap2-bin) to give uidmap back its file capabilities.
BUILDER_BASE_IMAGE = "dogs-cats-builder-base:bookworm"
BUILDER_BASE_PACKAGES = "runc,uidmap,libcap2-bin,ca-certificates"
BUILDKIT_FILES = ("buildkitd", "buildctl", "rootlesskit", "buildctl-daemonless.sh")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVING_REQUIREMENTS = ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime>=1.20", "pillow>=10")


def _training_requirements() -> tuple[str, ...]:
    """The project's base dependencies and its `training` extra, as pyproject.toml pins them."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return (*project["dependencies"], *project["optional-dependencies"]["training"])


TRAINING_REQUIREMENTS = _training_requirements()


@dataclass(frozen=True)
class DockerEngine:
    """One dockerd with its data under `root`; `docker` commands go to its socket, logged in
    to the cluster's registry as `registry_credentials` (kept in root/client, not ~/.docker)."""

    root: Path
    registry_credentials: RegistryCredentials

    @classmethod
    def for_node(cls, node: Node) -> DockerEngine:
        """The image builder of `node`'s cluster, pushing to its registry."""
        return cls(node.root / "docker", node.registry_credentials())

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.root / "client"),
        }

    def docker(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(["docker", *args], env=self.env, input=stdin, capture_output=True)
        if result.returncode != 0:
            raise ClusterError(f"docker {' '.join(args[:3])} failed:\n{result.stderr.decode()[-3000:]}")
        return result.stdout.decode()

    def running(self) -> bool:
        return subprocess.run(["docker", "info"], env=self.env, capture_output=True).returncode == 0

    def start(self, timeout_s: float = 60.0) -> None:
        if not self.running():
            self._start_daemon(timeout_s)
        credentials = self.registry_credentials
        self.docker(
            "login",
            REGISTRY,
            f"--username={credentials.username}",
            "--password-stdin",
            stdin=credentials.password.encode(),
        )

    def _start_daemon(self, timeout_s: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
            "dockerd",
            "--storage-driver=overlay2",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            # Its own pid file in its exec root: dockerd refuses one that names a running process.
            f"--pidfile={self.root / 'exec' / 'dockerd.pid'}",
            f"--host=unix://{self.socket}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            f"--insecure-registry={REGISTRY}",
        ]
        docker_process(self.root).start(command)
        docker_process(self.root).wait_until_ready(self.running, timeout_s, ClusterError)

    @contextlib.contextmanager
    def started(self) -> Iterator[DockerEngine]:
        """The engine running for a while (a build), stopped afterwards."""
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def stop(self) -> bool:
        return docker_process(self.root).stop(grace_s=30)

    def forget(self, *references: str) -> None:
        """Untag `references` (pushed already) and drop the images no tag keeps, build stages
        among them: what is rebuilt from every checkout need not stay on the disk as well."""
        self.docker("image", "rm", *references)
        self.docker("image", "prune", "--force")

    def has_image(self, reference: str) -> bool:
        return (
            subprocess.run(
                ["docker", "image", "inspect", reference], env=self.env, capture_output=True
            ).returncode
            == 0
        )

    def ensure_base_image(self, tag: str = BASE_IMAGE, packages: str = BASE_PACKAGES) -> str:
        """Debian bookworm (minbase and `packages`) from debootstrap, imported once as `tag`."""
        if self.has_image(tag):
            return tag
        with tempfile.TemporaryDirectory(dir=self.root) as scratch:
            rootfs = Path(scratch) / "rootfs"
            subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={packages}",
                    "bookworm",
                    str(rootfs),
                    DEBIAN_MIRROR,
                ],
                check=True,
                capture_output=True,
            )
            shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
            archive = subprocess.run(
                ["tar", "-C", str(rootfs), "-c", "."], check=True, capture_output=True
            ).stdout
            self.docker("import", "--change", 'CMD ["/bin/bash"]', "-", tag, stdin=archive)
        return tag

    def build(
        self, context: Path, dockerfile: Path, tag: str, build_args: dict[str, str] | None = None
    ) -> str:
        """`docker build` with no network; returns `tag`."""
        arguments = [f"--build-arg={key}={value}" for key, value in (build_args or {}).items()]
        self.docker("build", "--network=none", "-f", str(dockerfile), "-t", tag, *arguments, str(context))
        return tag

    def push(self, local: str, remote: str) -> str:
        """Tag `local` as `remote` (in the cluster's registry), push it, and return `remote`
        pinned to the digest pushed (`name:tag@sha256:...`): the node keeps images by
        reference, so a reused tag would otherwise run whatever it pulled first."""
        self.docker("tag", local, remote)
        self.docker("push", remote)
        repository = remote.rsplit(":", 1)[0]
        digests = self.docker("image", "inspect", "--format={{json .RepoDigests}}", remote)
        pinned = [d for d in json.loads(digests) if d.startswith(repository + "@")]
        if not pinned:
            raise ClusterError(f"docker push {remote} left no digest for {repository}: {digests}")
        return f"{remote}@{pinned[0].split('@', 1)[1]}"


def wheelhouse(folder: Path, requirements: tuple[str, ...]) -> Path:
    """Wheels for `requirements` (and their dependencies), downloaded on the host once."""
    stamp = folder / ".requirements"
    if stamp.exists() and stamp.read_text() == "\n".join(requirements):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "-d",
            str(folder),
            *requirements,
        ],
        check=True,
    )
    stamp.write_text("\n".join(requirements))
    return folder


def triton_cpu_runtime(engine: DockerEngine, cache: Path) -> str:
    """The CPU flavour's runtime image (packaging/Dockerfile.cpu-runtime), built once."""
    tag = "dogs-cats-triton-cpu-runtime:latest"
    if engine.has_image(tag):
        return tag
    base = engine.ensure_base_image()
    with tempfile.TemporaryDirectory(dir=engine.root) as scratch:
        context = Path(scratch)
        shutil.copytree(
            wheelhouse(cache / "wheelhouse-serving", SERVING_REQUIREMENTS), context / "wheelhouse"
        )
        dockerfile = REPO_ROOT / "packaging" / "Dockerfile.cpu-runtime"
        return engine.build(context, dockerfile, tag, {"BASE_IMAGE": base})


def triton_cpu_runtime_image(engine: DockerEngine, cache: Path) -> str:
    """The CPU runtime in the cluster's registry: the base the in-cluster BuildKit builds the
    CPU Triton image on (DOGS_CATS_CPU_RUNTIME_IMAGE)."""
    runtime = triton_cpu_runtime(engine, cache)
    return engine.push(runtime, f"{REGISTRY}/{runtime}")


def builder_image(engine: DockerEngine, binaries: Path) -> str:
    """Rootless BuildKit (cluster/Dockerfile.buildkit) from the binaries cluster/build.sh built,
    pushed to the cluster's registry; returns the reference the build pods run."""
    base = engine.ensure_base_image(BUILDER_BASE_IMAGE, BUILDER_BASE_PACKAGES)
    with tempfile.TemporaryDirectory(dir=engine.root) as scratch:
        context = Path(scratch)
        for name in BUILDKIT_FILES:
            shutil.copy2(binaries / name, context / name)
        version = pinned("BUILDKIT_VERSION")
        return build_and_push(
            engine,
            context,
            "cluster/Dockerfile.buildkit",
            f"dogs-cats-buildkit:{version}",
            {"BASE_IMAGE": base},
        )


def training_cpu_image(engine: DockerEngine, cache: Path, tag: str) -> str:
    """The CPU training image (training/Dockerfile.cpu): this checkout's wheel and its `training`
    extra, pushed to the cluster's registry; returns the reference the cluster pulls. Rebuilt
    from each checkout, so docker keeps none of it once pushed (its TensorFlow is 2 GiB)."""
    base = engine.ensure_base_image()
    name = f"dogs-cats-training-cpu:{tag}"
    with tempfile.TemporaryDirectory(dir=engine.root) as scratch:
        context = Path(scratch)
        wheels = context / "wheelhouse"
        shutil.copytree(wheelhouse(cache / "wheelhouse-training", TRAINING_REQUIREMENTS), wheels)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(REPO_ROOT)],
            check=True,
        )
        pushed = build_and_push(engine, context, "training/Dockerfile.cpu", name, {"BASE_IMAGE": base})
    engine.forget(name, f"{REGISTRY}/{name}")
    return pushed


def build_and_push(
    engine: DockerEngine, context: Path, dockerfile: str, name: str, parent: dict[str, str]
) -> str:
    """Build `name` from `dockerfile` (relative to the repository) on the `parent` image its
    ARG names, and push it to the cluster's registry."""
    local = engine.build(context, REPO_ROOT / dockerfile, name, parent)
    return engine.push(local, f"{REGISTRY}/{name}")
