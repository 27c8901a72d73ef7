"""What the amplifier needs from a relay board, whatever its protocol."""

from __future__ import annotations

from typing import Protocol


class RelayError(Exception):
    """The relay board could not be reached or did not do what it was told.

    The message is for the field technician: which port, what was sent, what came back,
    and what to try.
    """


class Relay(Protocol):
    """One relay channel of one board, switching the amplifier's mains.

    Not thread-safe: one caller at a time (the amplifier serialises its calls).
    """

    def switch(self, on: bool) -> None:
        """Switch the relay on or off; raise RelayError when the board fails."""
        ...

    def state(self) -> bool | None:
        """Whether the relay is on, as the board reports it; None when it cannot say.

        Drivers whose board does not answer return the last state they commanded (None
        before the first command). Raise RelayError when the board should answer and
        does not.
        """
        ...

    def close(self) -> None:
        """Release the port. Never raises; the relay is left as it is."""
        ...
