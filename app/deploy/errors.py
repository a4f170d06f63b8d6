"""What a deployment request can end in besides success, with the HTTP status each surface maps it to."""

from __future__ import annotations


class DeployError(Exception):
    """A deployment or rollback did not happen; the serving model is untouched.

    Args:
        reason: Why, for people.
        validation: What validation found (JSON-ready); empty when it did not run.

    Attributes:
        status: The HTTP status of this kind of failure.
    """

    status = 422

    def __init__(self, reason: str, validation: dict | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.validation = dict(validation or {})


class InvalidDeployRequest(DeployError):
    """The request itself is wrong: a bad body, an unknown precision (400)."""

    status = 400


class ModelPathError(InvalidDeployRequest):
    """The path is outside `model.deploy.models_dir`, missing, or not a file (400)."""


class DeployBusy(DeployError):
    """A deployment, rollback, recycle or worker replacement is already in progress (409)."""

    status = 409


class DeployRejected(DeployError):
    """The model failed to load or validation refused it (422); also: nothing to roll back to."""

    status = 422
