"""Messages the bot starts itself (not replies): how to reach a person on each platform."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from domain import User

log = logging.getLogger(__name__)

Notifier = Callable[[User, str], Awaitable[None]]


class Notifications:
    def __init__(self) -> None:
        self._by_platform: dict[str, Notifier] = {}
        self.stopping = False  # set at shutdown: the platforms are closing
        # For a platform this process does not serve (a trainer serves none): e.g. leave
        # the message for a worker that does.
        self.fallback: Notifier | None = None

    def register(self, platform: str, notifier: Notifier) -> None:
        self._by_platform[platform] = notifier

    def platforms(self) -> set[str]:
        return set(self._by_platform)

    async def send(self, user: User, text: str) -> None:
        """Best effort: a blocked bot or a deleted chat must not stop what called this."""
        notifier = self._by_platform.get(user.platform, self.fallback)
        if notifier is None:
            return
        if self.stopping:
            log.info("not messaging user %d: shutting down", user.id)
            return
        try:
            await notifier(user, text)
        except Exception:
            log.warning("could not notify user %d", user.id, exc_info=True)
