"""Webhook mode: updates arrive over HTTP; a request without the secret token is refused."""

from __future__ import annotations

import asyncio
import json

import httpx
from pydantic import SecretStr

from bot.runner import SharedService, serve
from bot.services import Services
from bot.settings import Settings
from bot.telegram_adapter.app import TelegramPlatform
from learner.encoder import ClipImageEncoder
from testing.fake_bot_api import FakeBotAPI
from testing.ports import free_port


async def test_webhook_checks_the_secret_on_every_request(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    api = FakeBotAPI()
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram-hook"
    settings = settings.model_copy(
        update={
            "telegram_bot_token": SecretStr(api.token),
            "telegram_api_url": "http://fake-telegram",
            "webhook_url": url,
            "webhook_listen": "127.0.0.1",
            "webhook_port": port,
            "webhook_secret": "s3cret-token",
        }
    )

    async def open_service() -> Services:
        return await Services.open(settings, encoder)

    platform = TelegramPlatform(settings, httpx_kwargs={"transport": api.transport()})
    stop = asyncio.Event()
    running = asyncio.create_task(serve(settings, SharedService(open_service), [platform], stop))
    try:
        [set_webhook] = await api.wait_for_call("setWebhook")
        assert set_webhook.params["url"] == url
        assert set_webhook.params["secret_token"] == "s3cret-token"
        update = api.send_text(1, "/help")
        body = json.dumps(update).encode()
        async with httpx.AsyncClient() as client:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}):
                refused = await client.post(url, content=body, headers=headers)
                assert refused.status_code == 403
            await asyncio.sleep(0.3)
            assert api.calls_to("sendMessage") == []  # nothing got through
            ok = await client.post(
                url,
                content=body,
                headers={
                    "X-Telegram-Bot-Api-Secret-Token": "s3cret-token",
                    "Content-Type": "application/json",
                },
            )
            assert ok.status_code == 200
        [reply] = await api.wait_for_call("sendMessage")
        assert "Send me an image" in reply.params["text"]
        assert api.poll_count == 0  # no long polling in webhook mode
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)
        api.close()
