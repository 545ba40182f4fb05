"""`python -m bot`: read settings, load CLIP, run the Telegram bot until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from bot.core import TasteService
from bot.settings import Settings
from bot.telegram_adapter.app import build_application

log = logging.getLogger("bot")


def load_settings() -> Settings:
    """Settings, or one clear line on stderr and exit code 2."""
    try:
        return Settings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as error:
        problems = []
        for e in error.errors():
            name = str(e["loc"][0]).upper() if e["loc"] else "settings"
            problems.append(
                f"{name} is not set" if e["type"] == "missing" else f"{name}: {e['msg']}"
            )
        print(f"tastebot: {'; '.join(problems)} (see .env.example)", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO, and Bot API URLs contain the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    async def open_service() -> TasteService:
        from learner.encoder import ClipImageEncoder  # torch import: slow, so only here

        log.info("loading CLIP %s", settings.clip_model)
        device = None if settings.device == "auto" else settings.device
        threads = settings.torch_threads or None
        encoder = await asyncio.to_thread(
            ClipImageEncoder, settings.clip_model, device=device, torch_threads=threads
        )
        service = await TasteService.open(settings, encoder)
        log.info("ready: encoder %s, data in %s", encoder.version, settings.data_dir)
        return service

    app = build_application(settings, open_service)
    # run_polling stops on SIGINT/SIGTERM, then runs post_shutdown (closes the database).
    app.run_polling(allowed_updates=["message", "callback_query"])


if __name__ == "__main__":
    main()
