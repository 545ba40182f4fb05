"""Long polling without PTB's Updater: fetch, store in the inbox, only then confirm.

getUpdates confirms every update below its ``offset``, so the offset moves past a batch only
once `Inbox.receive` has stored it: a process killed before that gets the batch again from
Telegram at its next start, and one killed after finds it in the inbox.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence

from telegram import Bot
from telegram.error import Forbidden, InvalidToken, RetryAfter, TelegramError

from bot.telegram_adapter.inbox import Inbox

log = logging.getLogger(__name__)

POLL_SECONDS = 10  # how long Telegram holds a getUpdates open when there is nothing new
MAX_BACKOFF_SECONDS = 30.0


def _seconds(delay: float | dt.timedelta) -> float:
    return delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)


class Poller:
    def __init__(self, bot: Bot, inbox: Inbox, allowed_updates: Sequence[str]) -> None:
        self.bot = bot
        self.inbox = inbox
        self.allowed_updates = list(allowed_updates)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        """The polling task: it ends only with an error that retrying cannot mend."""
        self._task = asyncio.create_task(self._run(), name="telegram polling")
        return self._task

    async def stop(self) -> None:
        # Cancelling a getUpdates in flight loses nothing: what it would have returned is
        # not confirmed, and Telegram delivers it again.
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        offset: int | None = None
        backoff = 1.0
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=offset, timeout=POLL_SECONDS, allowed_updates=self.allowed_updates
                )
                if updates:
                    await self.inbox.receive([update.to_dict() for update in updates])
                    offset = updates[-1].update_id + 1
                backoff = 1.0
            except (InvalidToken, Forbidden):
                raise  # the token was revoked: nothing to retry
            except RetryAfter as error:  # flood control: Telegram says how long to wait
                log.warning("getUpdates: flood control, waiting %s", error.retry_after)
                await asyncio.sleep(_seconds(error.retry_after))
                continue
            except (TelegramError, OSError) as error:
                log.warning("getUpdates failed (%s); again in %.0f s", error, backoff)
            except Exception:  # storing failed: not confirmed, Telegram sends them again
                log.exception("could not store updates; fetching them again in %.0f s", backoff)
            else:
                continue
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)
