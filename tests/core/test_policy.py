"""The path and URL policy for what a conf names: a table of confs an attacker would try, each
refused where the decision is made, with the field, the value and the rule in the message.

No test here sends a packet: host names resolve through a table, and any connect call fails
the test (`no_network`)."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from core.policy import AccessPolicy, PolicyRefused, access_policy, check_run
from core.settings import Environment, RunConfig

# Names and the addresses a resolver would give them; any other name does not resolve.
HOSTS = {
    "data.example.org": ["93.184.216.34"],
    "localhost": ["127.0.0.1", "::1"],
    "metadata.google.internal": ["169.254.169.254"],
    "intranet.corp": ["10.1.2.3"],
    "mixed.example.org": ["93.184.216.34", "192.168.1.10"],
}


def _resolve(host: str) -> list[str]:
    if host in HOSTS:
        return HOSTS[host]
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        raise socket.gaierror(f"{host} is not in the test's table") from None


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching a connect call is a failure: the verdict must come before any packet."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a policy test tried to connect: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "outside")
    return allowed


@pytest.fixture
def policy(root: Path) -> AccessPolicy:
    return AccessPolicy(allowed_roots=(root,), resolve=_resolve)


def _conf(root: Path, **fields: str) -> RunConfig:
    return RunConfig.model_validate(
        {"data_bucket": str(root / "bucket"), "source": str(root / "data"), **fields}
    )


# (field, value with {root} and {outside}, what the refusal names)
HOSTILE = [
    ("data_bucket", "{root}/../outside", "outside the allowed roots"),
    ("data_bucket", "/etc/cron.d", "outside the allowed roots"),
    ("data_bucket", "~/.ssh", "outside the allowed roots"),
    ("source", "{root}/escape", "outside the allowed roots"),  # a link out of the root
    ("inference_input", "/proc/self/environ", "outside the allowed roots"),
    ("data_bucket", "file:///etc", "no other scheme"),
    ("source", "file:///etc/passwd", "no other scheme"),
    ("source", "ftp://data.example.org/pets.zip", "no other scheme"),
    ("source", "http://127.0.0.1:8080/pets.zip", "a loopback address"),
    ("source", "http://localhost/pets.zip", "a loopback address"),
    ("source", "http://[::1]/pets.zip", "a loopback address"),
    ("source", "http://[::ffff:127.0.0.1]/pets.zip", "a loopback address"),
    ("source", "http://169.254.169.254/computeMetadata/v1/", "a link-local address"),
    ("source", "http://metadata.google.internal/computeMetadata/v1/", "a link-local address"),
    ("source", "https://intranet.corp/pets.zip", "a private address"),
    ("source", "http://mixed.example.org/pets.zip", "192.168.1.10, a private address"),
    ("source", "http://0.0.0.0/pets.zip", "an unspecified address"),
    ("source", "http://[fe80::1]/pets.zip", "a link-local address"),
    ("source", "http://100.64.0.1/pets.zip", "a reserved address"),
    ("source", "http://nowhere.invalid/pets.zip", "does not resolve"),
    ("data_bucket", "gs://../etc", "is not a GCS bucket name"),
    ("data_bucket", "gs://Bucket/x", "is not a GCS bucket name"),
    ("data_bucket", "gs://b", "is not a GCS bucket name"),
    ("data_bucket", "gs://192.168.1.1/x", "is not a GCS bucket name"),
    ("data_bucket", "gs://bucket/../other-bucket", "no '.', '..' or empty part"),
    ("data_bucket", "gs://bucket//x", "no '.', '..' or empty part"),
    ("data_bucket", "gs://bucket/x?alt=media", "control or wildcard character"),
]


@pytest.mark.security
@pytest.mark.parametrize(("field", "value", "rule"), HOSTILE, ids=[f"{f}={v}" for f, v, _ in HOSTILE])
def test_a_hostile_conf_is_refused_with_its_field_value_and_rule(
    policy: AccessPolicy, root: Path, field: str, value: str, rule: str
) -> None:
    value = value.format(root=root)
    conf = _conf(root, **{field: value})
    with pytest.raises(PolicyRefused) as refused:
        check_run(conf, policy)
    message = str(refused.value)
    assert message.startswith(f"{field}={value!r}: "), message
    assert rule in message
    assert sorted(os.listdir(root)) == ["data", "escape"], "nothing written"


def test_what_the_deployment_allows_passes(policy: AccessPolicy, root: Path) -> None:
    check_run(_conf(root), policy)
    check_run(_conf(root, source="https://data.example.org/pets.zip", inference_input=str(root)), policy)
    check_run(_conf(root, data_bucket="gs://my-bucket/dogs-cats", source="gs://my-bucket/PetImages"), policy)
    networked = AccessPolicy(
        allowed_roots=(root,), allowed_networks=(ipaddress.ip_network("10.0.0.0/8"),), resolve=_resolve
    )
    check_run(_conf(root, source="https://intranet.corp/pets.zip"), networked)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
        ("127.0.0.53", "a loopback address"),
        ("169.254.169.254", "a link-local address"),
        ("172.16.5.4", "a private address"),
        ("192.168.0.1", "a private address"),
        ("fd00::1", "a private address"),
        ("224.0.0.1", "a multicast address"),
        ("::", "an unspecified address"),
        ("::ffff:169.254.169.254", "a link-local address"),
    ],
)
def test_the_verdict_on_an_address(policy: AccessPolicy, address: str, refused: str | None) -> None:
    verdict = policy.address_refused(ipaddress.ip_address(address))
    assert (verdict is None) if refused is None else (verdict is not None and verdict.startswith(refused))


def test_the_deployment_sets_the_policy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOGS_CATS_ALLOWED_ROOTS", f'["{tmp_path}"]')
    monkeypatch.setenv("DOGS_CATS_ALLOWED_NETWORKS", '["10.20.0.0/16"]')
    monkeypatch.setenv("DOGS_CATS_MAX_ARCHIVE_MEMBERS", "10")
    policy = access_policy(Environment())
    assert policy.allowed_roots == (tmp_path,)
    assert policy.allowed_networks == (ipaddress.ip_network("10.20.0.0/16"),)
    assert policy.max_archive_members == 10
    monkeypatch.delenv("DOGS_CATS_ALLOWED_ROOTS")
    with pytest.raises(
        PolicyRefused, match=r"outside the allowed roots \(none \(set DOGS_CATS_ALLOWED_ROOTS\)\)"
    ):
        access_policy(Environment()).check_path("data_bucket", str(tmp_path))
