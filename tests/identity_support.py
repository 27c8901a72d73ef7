"""Cluster identities for tests: an agent's key made in its data folder and registered with
a running controller (as a manager's approval would), and what agents sign read back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.audit import AuditEntry
from controller.identities import Identities
from controller.main import Controller
from controller.store import Store
from device_agent.identity import AgentIdentity
from protocol.signing import Sealed, unseal


def registered_identity(controller: Controller, cluster: str, data_dir: Path) -> AgentIdentity:
    """The key of the agent whose data is in data_dir (made there if new), registered as
    the cluster's key, and loaded into the running controller's checks at once."""
    identity = AgentIdentity.load_or_create(data_dir)
    controller.identities.register_key(
        cluster, identity.public_key, identity.key_id, by="test", now=controller.clock.now()
    )
    controller.enrolment.refresh()
    return identity


def token_file(store_url: str, cluster: str, path: Path, *, auto_approve: bool = True) -> Path:
    """A new enrolment token for cluster, issued on the store at store_url (whether its
    controller runs or not), written to path: the provisioning bundle's token file."""
    store = Store(store_url)
    try:
        issued = Identities(store).issue_token(
            cluster, by="test", now=datetime.now(UTC), auto_approve=auto_approve
        )
    finally:
        store.close()
    path.write_text(issued.token + "\n", encoding="utf-8")
    return path


def enrolments_aside(entries: list[AuditEntry]) -> list[AuditEntry]:
    """Audit entries, less those of the rig registering its agents' keys."""
    return [e for e in entries if not e.action.startswith("enrol-")]


def body_of(payload: bytes) -> Any:
    """What an agent's signed message carries (its JSON value), signature unchecked."""
    sealed = unseal(payload)
    assert isinstance(sealed, Sealed), f"not a signed message: {payload[:80]!r}"
    return sealed.body
