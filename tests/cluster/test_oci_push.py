"""The registry account's two renderings: the Basic header and a dockerconfigjson Secret's body."""

from __future__ import annotations

import base64
import json

from cluster.oci_push import RegistryCredentials


def test_the_docker_config_names_the_registry_with_the_account_docker_login_would_write() -> None:
    credentials = RegistryCredentials("dogs-cats", "s3cret-_x")
    config = json.loads(credentials.docker_config("10.88.0.1:5000"))
    entry = config["auths"]["10.88.0.1:5000"]
    assert base64.b64decode(entry["auth"]).decode() == "dogs-cats:s3cret-_x"
    assert (entry["username"], entry["password"]) == ("dogs-cats", "s3cret-_x")
    assert credentials.authorization() == "Basic " + entry["auth"]
