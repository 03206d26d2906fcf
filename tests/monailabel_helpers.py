"""Helpers of the app's tests: the server launcher (``tools/monailabel_server.py``) and checks of its answers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from monailabel.client.client import MONAILabelClientException

from tools.monailabel_server import APP, MonaiLabelServer, client_for, free_port, port_is_free, wait_for_training

__all__ = ["APP", "MonaiLabelServer", "assert_rejected", "client_for", "free_port", "port_is_free", "sha",
           "wait_for_training"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_rejected(call, status: str, text: str) -> None:
    """``call`` fails with HTTP ``status`` and a message that contains ``text``."""
    with pytest.raises(MONAILabelClientException) as caught:
        call()
    assert f"Status: {status}" in caught.value.msg and text in caught.value.msg, caught.value.msg
