"""The API's errors: `{"error": "<what is wrong and what to do>", "status": <code>}`.

The message is English, or Vietnamese for a client whose Accept-Language asks for it
first (`loa-controller urgent` under a Vietnamese locale): `ApiError.message` is a
protocol.l10n.Text where the catalog has it, translated when the answer is written.
"""

from __future__ import annotations

from controller.audio import AudioError
from controller.fleet import UnknownTargetError
from controller.tts import TtsUnavailableError
from controller.urgent import UrgentError
from protocol.l10n import Lang, Text, lang_of


class ApiError(Exception):
    def __init__(
        self, status: int, message: Text | str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def in_(self, lang: Lang) -> str:
        """The message in this language."""
        return self.message.in_(lang) if isinstance(self.message, Text) else self.message


def api_lang(accept_language: str | None) -> Lang:
    """The language of the API's errors: Vietnamese when Accept-Language puts it first,
    else English."""
    first = (accept_language or "").split(",")[0].split(";")[0]
    return "vi" if lang_of(first) == "vi" else "en"


#: What the urgent service refuses with a message for the user (service_error).
SERVICE_ERRORS = (UrgentError, UnknownTargetError, TtsUnavailableError, AudioError)


def service_error(exc: Exception) -> ApiError:
    """The API's answer to one of SERVICE_ERRORS; anything else is raised again."""
    message: Text | str = str(exc)
    if isinstance(exc, AudioError):  # never the path it had on the server
        message = Text("the audio file cannot be used: {reason}. {advice}",
                       reason=exc.reason, advice=exc.advice)
    elif exc.args and isinstance(exc.args[0], Text):
        message = exc.args[0]
    if isinstance(exc, UrgentError):
        return ApiError(exc.status, message)
    if isinstance(exc, SERVICE_ERRORS):
        return ApiError(400, message)
    raise exc
