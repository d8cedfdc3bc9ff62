"""The explicit AWS provider gets the stack's aws:* settings (issue 14 point 6): an explicit provider reads no stack
config by itself, so `pulumi config set aws:profile ops` used to be silently ignored."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from infra.aws import aws_provider_args
from infra.config import ConfigError
from lab.cloud import run_program, stack_config_from_file

REPO = Path(__file__).resolve().parent.parent
T_PROVIDER = "pulumi:providers:aws"
ROLE = {"roleArn": "arn:aws:iam::123456789012:role/hybrid-vpn-deploy", "sessionName": "hybrid-vpn"}


def lab() -> dict[str, Any]:
    return copy.deepcopy(stack_config_from_file(REPO / "stacks" / "Pulumi.lab.yaml"))


def test_profile_credentials_files_and_assume_roles_reach_the_provider():
    config = lab()
    config.update({
        "aws:profile": "network-ops",
        "aws:sharedCredentialsFiles": ["/home/ops/.aws/credentials"],
        "aws:sharedConfigFiles": ["/home/ops/.aws/config"],
        "aws:assumeRoles": [ROLE],
        "aws:allowedAccountIds": ["123456789012"],
        "aws:defaultTags": {"tags": {"CostCenter": "net"}},
        "aws:skipMetadataApiCheck": True,
    })
    provider = run_program(config).one(T_PROVIDER).inputs
    # Provider inputs travel JSON-encoded, exactly as the default provider would read them from the stack.
    assert provider["profile"] == "network-ops"
    assert json.loads(provider["sharedCredentialsFiles"]) == ["/home/ops/.aws/credentials"]
    assert json.loads(provider["sharedConfigFiles"]) == ["/home/ops/.aws/config"]
    assert json.loads(provider["assumeRoles"]) == [ROLE]
    assert json.loads(provider["allowedAccountIds"]) == ["123456789012"]
    assert json.loads(provider["defaultTags"]) == {"tags": {"CostCenter": "net"}}
    assert provider["skipMetadataApiCheck"] in (True, "true")
    assert provider["region"] == "us-east-1"


def test_without_aws_settings_the_provider_has_only_the_region():
    """An existing stack without aws:* keys sees no provider diff from this change."""
    assert aws_provider_args({}, "eu-west-1") == {"region": "eu-west-1"}
    provider = run_program(lab()).one(T_PROVIDER).inputs
    assert "profile" not in provider and "assumeRoles" not in provider and provider["region"] == "us-east-1"


def test_static_keys_set_as_secrets_stay_secret():
    config = lab()
    config.update({"aws:accessKey": "AKIAFAKEFAKEFAKEFAKE", "aws:secretKey": "FAKE_secret_key_not_a_real_one"})
    provider = run_program(config, secret_keys=("aws:secretKey",)).one(T_PROVIDER)
    assert {"accessKey", "secretKey"} <= provider.secret_inputs


def test_singular_assume_role_of_older_stacks_becomes_assume_roles():
    assert aws_provider_args({"assumeRole": ROLE}, "us-east-1")["assume_roles"] == [ROLE]


def test_a_conflicting_aws_region_is_refused_before_any_resource():
    config = lab()
    config["aws:region"] = "eu-central-1"
    registered: list = []
    with pytest.raises(ConfigError, match=r"aws:region: eu-central-1 differs from hybrid-vpn:aws.region us-east-1"):
        run_program(config, record=registered)
    assert registered == []
    same = lab()
    same["aws:region"] = "us-east-1"
    assert run_program(same).one(T_PROVIDER).inputs["region"] == "us-east-1"


def test_an_unknown_aws_key_is_refused_with_examples():
    with pytest.raises(ConfigError) as info:
        aws_provider_args({"profil": "ops", "profile": "ops"}, "us-east-1")
    assert "aws:profil: not a setting of the AWS provider" in str(info.value)
    assert "aws:profile, aws:sharedCredentialsFiles" in str(info.value)
    assert len(info.value.problems) == 1
