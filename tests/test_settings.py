"""Settings: every key documented in .env.example, the ones a person must set first."""

from __future__ import annotations

import re
from pathlib import Path

from bot.settings import Settings

EXAMPLE = (Path(__file__).resolve().parent.parent / ".env.example").read_text()


def _keys_in_order() -> list[str]:
    return re.findall(r"^([A-Z_]+)=", EXAMPLE, re.M)


def test_every_setting_is_documented_once() -> None:
    keys = _keys_in_order()
    fields = {name.upper() for name in Settings.model_fields}
    assert sorted(set(keys)) == sorted(keys), "a key is listed twice"
    assert set(keys) == fields


def test_the_settings_a_person_must_set_come_first() -> None:
    assert _keys_in_order()[:2] == ["TELEGRAM_BOT_TOKEN", "ADMIN_IDS"]


def test_the_example_file_is_valid_settings_once_a_token_is_set(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(EXAMPLE.replace("TELEGRAM_BOT_TOKEN=\n", "TELEGRAM_BOT_TOKEN=1:x\n", 1))
    settings = Settings(_env_file=env)  # type: ignore[call-arg]
    assert settings.telegram_bot_token is not None
    assert settings.retrain_after_votes and settings.crowd_min_people == 3
