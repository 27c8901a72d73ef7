"""The API's errors: `{"error": "<what is wrong and what to do>", "status": <code>}`."""

from __future__ import annotations

from controller.audio import AudioError
from controller.fleet import UnknownTargetError
from controller.tts import TtsUnavailableError
from controller.urgent import UrgentError


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


#: What the urgent service refuses with a message for the user (service_error).
SERVICE_ERRORS = (UrgentError, UnknownTargetError, TtsUnavailableError, AudioError)


def service_error(exc: Exception) -> ApiError:
    """The API's answer to one of SERVICE_ERRORS; anything else is raised again."""
    if isinstance(exc, UrgentError):
        return ApiError(exc.status, str(exc))
    if isinstance(exc, SERVICE_ERRORS):
        return ApiError(400, str(exc))
    raise exc
