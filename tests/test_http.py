"""The HTTP server: the webhook behind the inbox, /healthz and /metrics."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from bot.__main__ import build_platforms
from bot.http_server import HttpServer
from bot.services import Services
from bot.settings import Settings
from bot.telegram_adapter.app import TelegramPlatform
from learner.encoder import ClipImageEncoder
from storage.inbox import InboxStore
from storage.telemetry import TelemetryStore
from testing.fake_bot_api import FakeBotAPI
from testing.ports import free_port
from tests.conftest import image_bytes
from tests.test_inbox import ALICE, fake_settings, inbox_rows, replies_to, running

SECRET = {"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"}


def webhook_settings(settings: Settings, api: FakeBotAPI) -> tuple[Settings, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram-hook"
    changed = fake_settings(
        settings,
        api,
        webhook_url=url,
        webhook_listen="127.0.0.1",
        webhook_port=port,
        webhook_secret="s3cret-token",
    )
    return changed, url


async def test_the_webhook_answers_200_only_once_the_update_is_stored(
    settings: Settings, encoder: ClipImageEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeBotAPI()
    settings, url = webhook_settings(settings, api)
    async with running(settings, encoder, api) as bot, httpx.AsyncClient() as client:
        update = api.send_photo(ALICE, image_bytes(3))
        api.drop_pending()  # this update comes by webhook
        refused = await client.post(url, json=update)
        assert refused.status_code == 403
        assert await inbox_rows(bot.services) == []

        async def no_disk(*args: object, **kwargs: object) -> list[int]:
            raise OSError("disk I/O error")

        with monkeypatch.context() as patch:
            patch.setattr(InboxStore, "add", no_disk)
            failed = await client.post(url, json=update, headers=SECRET)
        assert failed.status_code == 500  # Telegram sends it again
        assert await inbox_rows(bot.services) == []

        ok = await client.post(url, json=update, headers=SECRET)
        assert ok.status_code == 200
        # Stored by the time the 200 went out.
        assert [row[0] for row in await inbox_rows(bot.services)] == [update["update_id"]]
        again = await client.post(url, json=update, headers=SECRET)  # Telegram's retry
        assert again.status_code == 200
        [reply] = await api.wait_for(lambda: replies_to(api, update["message"]))
        assert "Your score" in reply["text"]
        base = url.rsplit("/", 1)[0]
        assert (await client.get(f"{base}/healthz")).text == "ok\n"
        assert (await client.post(url, content=b"[]", headers=SECRET)).status_code == 400
    assert len(replies_to(api, update["message"])) == 1
    api.close()


def sample(metrics_text: str, name: str) -> float:
    """One sample's value (0 when absent) from the text exposition."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics_text, re.MULTILINE)
    return 0.0 if found is None else float(found.group(1))


SCORED = 'tastebot_photos_total{outcome="scored",platform="telegram"}'
REPLIES = 'tastebot_reply_seconds_count{platform="telegram"}'


async def test_metrics_count_photos_and_healthz_waits_for_the_model(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    api = FakeBotAPI()
    settings = fake_settings(settings, api, http_listen="127.0.0.1", http_port=free_port())
    http = HttpServer(settings.http_listen, settings.http_port)
    base = f"http://127.0.0.1:{settings.http_port}"
    async with running(settings, encoder, api, before=[http], http=http) as bot:
        async with httpx.AsyncClient() as client:
            before = (await client.get(f"{base}/metrics")).text
            update = api.send_photo(ALICE, image_bytes(5))
            await api.wait_for(lambda: replies_to(api, update["message"]))
            for _ in range(50):  # the handler records the reply, then the inbox marks it done
                after = (await client.get(f"{base}/metrics")).text
                if sample(after, "tastebot_inbox_pending") == 0:
                    break
                await asyncio.sleep(0.1)
            health = await client.get(f"{base}/healthz")
        assert sample(after, SCORED) == sample(before, SCORED) + 1
        assert sample(after, REPLIES) == sample(before, REPLIES) + 1
        assert sample(after, "tastebot_inbox_pending") == 0
        assert (health.status_code, health.text) == (200, "ok\n")
        assert bot.services is http.services
    api.close()


async def test_healthz_is_503_until_the_services_are_attached_and_when_the_database_fails(
    service: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    http = HttpServer("127.0.0.1", port)
    await http.connect()
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        async with httpx.AsyncClient() as client:
            loading = await client.get(url)
            assert loading.status_code == 503 and "not loaded" in loading.text
            await http.start(service)
            assert (await client.get(url)).status_code == 200

            async def down(self: TelemetryStore) -> None:
                raise OSError("database is locked")

            monkeypatch.setattr(TelemetryStore, "ping", down)
            broken = await client.get(url)
            assert broken.status_code == 503 and "database is locked" in broken.text
    finally:
        await http.stop()


async def _never() -> Services:
    raise AssertionError("not opened here")


def test_python_m_bot_serves_webhook_health_and_metrics_on_one_port(settings: Settings) -> None:
    webhook = settings.model_copy(
        update={"webhook_url": "https://bot.example.com/tg", "webhook_port": 9000}
    )
    http, telegram = build_platforms(webhook, _never)
    assert isinstance(http, HttpServer) and isinstance(telegram, TelegramPlatform)
    assert (http.listen, http.port) == ("0.0.0.0", 9000)
    routes = {(r.method, r.resource.canonical) for r in http.application().router.routes()}
    assert {("POST", "/tg"), ("GET", "/healthz"), ("GET", "/metrics")} <= routes
    # Long polling: health and metrics only where HTTP_PORT says, and no server without it.
    http, _ = build_platforms(settings.model_copy(update={"http_port": 9100}), _never)
    assert isinstance(http, HttpServer) and (http.listen, http.port) == ("127.0.0.1", 9100)
    [only] = build_platforms(settings, _never)
    assert isinstance(only, TelegramPlatform)
