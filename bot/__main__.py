"""`python -m bot [--role all|worker|trainer]`: read settings, load CLIP once, run Telegram
and/or Discord (not on a trainer) and the role's training work on one event loop until
SIGINT/SIGTERM (see bot/runner.py and bot/roles.py)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from bot.runner import ConnectFailed, OpenService, Platform, SharedService, serve
from bot.settings import Settings
from learner.model_source import ModelUnavailable  # standard library only

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger("bot")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    parser.add_argument(
        "--role",
        choices=("all", "worker", "trainer"),
        help="what this process runs (default: the ROLE setting, else all); "
        "see docs/operations.md, Roles",
    )
    return parser.parse_args(argv)


def load_settings(role: str | None = None) -> Settings:
    """Settings, or one clear line on stderr and exit code 2. ``role`` overrides ROLE."""
    overrides = {} if role is None else {"role": role}
    env_file = os.environ.get("TASTEBOT_ENV_FILE", ".env")
    if env_file != ".env" and not Path(env_file).is_file():
        print(f"tastebot: TASTEBOT_ENV_FILE names {env_file}, which is not a file", file=sys.stderr)
        raise SystemExit(2)
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg,arg-type]
    except ValidationError as error:
        problems = []
        for e in error.errors():
            if not e["loc"]:  # a whole-settings check, e.g. no platform token at all
                problems.append(str(e.get("ctx", {}).get("error", e["msg"])))
                continue
            name = str(e["loc"][0]).upper()
            message = str(e["msg"]).removeprefix("Value error, ")
            problems.append(
                f"{name} is not set" if e["type"] == "missing" else f"{name}: {message}"
            )
        print(f"tastebot: {'; '.join(problems)} (see .env.example)", file=sys.stderr)
        raise SystemExit(2) from None


def build_platforms(settings: Settings, open_service: OpenService) -> list[Platform]:
    platforms: list[Platform] = []
    http = None
    # First in the list: the runner starts it first (/healthz says "starting" while CLIP
    # loads) and stops it last (the webhook answers 503 while the handlers finish).
    webhook = settings.webhook_url is not None and settings.telegram_bot_token is not None
    if webhook and settings.role != "trainer":
        from bot.http_server import HttpServer

        http = HttpServer(settings.webhook_listen, settings.webhook_port)
    elif settings.http_port:
        from bot.http_server import HttpServer

        http = HttpServer(settings.http_listen, settings.http_port)
    if http is not None:
        platforms.append(http)
    if settings.role == "trainer":  # its messages go through a worker (bot/job_notices.py)
        return platforms
    if settings.telegram_bot_token is not None:
        from bot.telegram_adapter.app import TelegramPlatform

        platforms.append(TelegramPlatform(settings, http=http))
    if settings.discord_bot_token is not None:
        from bot.discord_adapter.app import DiscordPlatform

        platforms.append(DiscordPlatform(settings))
    return platforms


# One function: the settings, the logging set-up and the services' loader are one start-up
# sequence, and the loader closes over the settings.
def main() -> None:
    settings = load_settings(parse_args().role)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO, and Bot API URLs contain the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # APScheduler logs every tick at INFO; transformers draws progress bars while loading.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # which CPU build it loaded
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

    async def open_services() -> Services:
        # torch, transformers, FAISS: slow imports, so only once the tokens are checked
        from bot.backbone import model_to_load
        from bot.encoder_loading import load_encoder
        from bot.services import Services

        model = await model_to_load(settings)  # a promoted fine-tune, else CLIP_MODEL
        encoder = await load_encoder(settings, model)
        text_encoder = None
        if settings.text_weight > 0:
            from learner.text import ClipTextEncoder

            # Shares the loaded CLIPModel; None (text off) when the model has no tokenizer.
            text_encoder = ClipTextEncoder.from_pretrained(
                model, model=encoder.model, revision=settings.clip_revision
            )
        services = await Services.open(settings, encoder, text_encoder)
        log.info("ready: encoder %s, data in %s", encoder.version, settings.data_dir)
        return services

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        shared = SharedService(open_services)
        await serve(settings, shared, build_platforms(settings, shared.get), stop)

    try:
        asyncio.run(run())
        # Everything is closed and flushed by now. The interpreter's last garbage collection
        # walks torch's and OpenVINO's object graphs, seconds on a loaded machine: skip it.
        gc.disable()
    except (ConnectFailed, ModelUnavailable) as error:
        # A wrong token, no network, a CLIP model that cannot be loaded: say so, no traceback.
        print(f"tastebot: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
