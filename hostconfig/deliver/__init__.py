"""Delivery of the rendered configuration to the gateway: SSH/SFTP push (push.py) and its Pulumi resource
(provider.py)."""

from hostconfig.deliver.changes import Command, DesiredFile
from hostconfig.deliver.push import (
    AuthenticationFailed,
    CommandFailed,
    DeliveryError,
    GatewayUnreachable,
    HostKeyMismatch,
    PushReport,
    SshTarget,
    push_files,
)

__all__ = [
    "AuthenticationFailed",
    "Command",
    "CommandFailed",
    "DeliveryError",
    "DesiredFile",
    "GatewayUnreachable",
    "HostKeyMismatch",
    "PushReport",
    "SshTarget",
    "push_files",
]
