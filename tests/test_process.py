"""`python -m bot` as a person runs it: a local CLIP directory, a fake Bot API on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.telegram_adapter.callback_data import encode_vote
from domain import Vote
from testing.fake_bot_api import FakeBotAPI
from tests.conftest import image_bytes

USER = 7
# The bot runs with a temporary directory as its working directory (no .env there); this
# checkout's code, not whatever an editable install points at, is what runs.
CODE = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}


@pytest.fixture
def api() -> Iterator[tuple[FakeBotAPI, str]]:
    fake = FakeBotAPI()
    with fake.serve() as url:
        yield fake, url
    fake.close()


def start_bot(
    url: str, token: str, clip_dir: Path, data_dir: Path, cwd: Path
) -> subprocess.Popen[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        **CODE,
        "TELEGRAM_BOT_TOKEN": token,
        "TELEGRAM_API_URL": url,
        "CLIP_MODEL": str(clip_dir),
        "DATA_DIR": str(data_dir),
        "ADMIN_IDS": str(USER),
        "HF_HUB_OFFLINE": "1",
        "DUPLICATE_THRESHOLD": "0.9995",  # the tiny random CLIP puts all images close together
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bot"],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def run_bot_once(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m bot`` that is expected to stop by itself (a start-up error)."""
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**CODE, **env},
        timeout=120,
    )


def reply_to_photo(api: FakeBotAPI, seed: int) -> dict:
    before = len(api.sent_messages(chat_id=USER))
    api.send_photo(USER, image_bytes(seed))
    return api.wait_for_sync(
        lambda: m[-1] if len(m := api.sent_messages(chat_id=USER)) > before else None, timeout=60
    )


def vote(api: FakeBotAPI, reply: dict, choice: Vote) -> None:
    data = reply["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
    submission_id = int(data.split(":")[1])
    before = len(api.answered_callbacks())
    api.press_button(USER, reply, encode_vote(submission_id, choice))
    api.wait_for_sync(lambda: len(api.answered_callbacks()) > before, timeout=30)


def test_missing_token_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), **CODE},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tastebot: neither TELEGRAM_BOT_TOKEN nor DISCORD_BOT_TOKEN is set (see .env.example)"
    ]


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("LOG_LEVEL=verbose", "tastebot: LOG_LEVEL: Input should be 'DEBUG', 'INFO'"),
        ("ADMIN_IDS=@me", "tastebot: ADMIN_IDS: '@me' is not a user id;"),
        ("RETRAIN_PAUSE_SECONDS=soon", "tastebot: RETRAIN_PAUSE_SECONDS: "),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_code_2(
    tmp_path: Path, setting: str, expected: str
) -> None:
    name, value = setting.split("=", 1)
    env = {"PATH": os.environ.get("PATH", ""), "TELEGRAM_BOT_TOKEN": "1:x", name: value}
    result = run_bot_once(env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_loop_and_sigterm(api: tuple[FakeBotAPI, str], clip_dir: Path, tmp_path: Path) -> None:
    fake, url = api
    bot = start_bot(url, fake.token, clip_dir, tmp_path / "data", tmp_path)
    try:
        replies = [reply_to_photo(fake, seed) for seed in range(1, 11)]
        assert "cold start" in replies[0]["text"]
        for seed, reply in enumerate(replies, start=1):
            vote(fake, reply, Vote.LIKE if seed % 2 else Vote.DISLIKE)
        fake.send_text(USER, "/retrain")
        fake.wait_for_sync(
            lambda: any(
                "v1 promoted" in m.get("text", "") for m in fake.sent_messages(chat_id=USER)
            ),
            timeout=60,
        )
        assert "· model v1" in reply_to_photo(fake, 50)["text"]

        started = time.monotonic()
        bot.send_signal(signal.SIGTERM)
        assert bot.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        if bot.poll() is None:
            bot.kill()
        log = bot.communicate()[0]
    assert "TEST-fake-bot-api-token" not in log  # httpx request URLs carry the token


def test_kill_9_loses_no_vote_and_counts_none_twice(
    api: tuple[FakeBotAPI, str], clip_dir: Path, tmp_path: Path
) -> None:
    fake, url = api
    data_dir = tmp_path / "data"
    bot = start_bot(url, fake.token, clip_dir, data_dir, tmp_path)
    try:
        replies = [reply_to_photo(fake, seed) for seed in range(1, 5)]
        for reply in replies:
            vote(fake, reply, Vote.LIKE)
        # A tap Telegram will deliver again after the crash: it was answered, never confirmed.
        pending = fake.press_button(
            USER,
            replies[0],
            encode_vote(
                int(
                    replies[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"].split(":")[
                        1
                    ]
                ),
                Vote.SUPER_LIKE,
            ),
        )
        fake.wait_for_sync(lambda: len(fake.answered_callbacks()) == 5, timeout=30)
        bot.send_signal(signal.SIGKILL)
        bot.wait(timeout=10)
    finally:
        if bot.poll() is None:
            bot.kill()
        bot.communicate()

    def counts() -> tuple[int, int, int]:
        with sqlite3.connect(data_dir / "tastebot.sqlite3") as db:
            row = db.execute(
                "SELECT COUNT(*), SUM(vote = 'super_like'), MAX(revision) FROM feedback"
            ).fetchone()
        return (int(row[0]), int(row[1] or 0), int(row[2]))

    assert counts() == (4, 1, 5)
    fake.redeliver(pending)
    bot = start_bot(url, fake.token, clip_dir, data_dir, tmp_path)
    try:
        fake.wait_for_sync(lambda: len(fake.calls_to("answerCallbackQuery")) >= 6, timeout=60)
        assert "Images you sent: 4 · 👍 3 · ⭐ 1 · 👎 0" in _command(fake, "/stats")
    finally:
        bot.send_signal(signal.SIGTERM)
        bot.wait(timeout=15)
        bot.communicate()
    assert counts() == (4, 1, 5)  # the redelivered tap changed nothing twice


def _command(api: FakeBotAPI, text: str) -> str:
    before = len(api.sent_messages(chat_id=USER))
    api.send_text(USER, text)
    messages = api.wait_for_sync(
        lambda: m if len(m := api.sent_messages(chat_id=USER)) > before else None, timeout=30
    )
    return str(messages[-1].get("text") or messages[-1].get("caption"))


def test_sigterm_is_quick_when_the_bot_api_stops_answering(
    api: tuple[FakeBotAPI, str], clip_dir: Path, tmp_path: Path
) -> None:
    """Connections are accepted and never answered: the final requests (confirming updates,
    replies in flight) must not hold the shutdown past its budget, and what was committed
    stays committed."""
    fake, url = api
    data_dir = tmp_path / "data"
    bot = start_bot(url, fake.token, clip_dir, data_dir, tmp_path)
    try:
        reply = reply_to_photo(fake, 1)
        vote(fake, reply, Vote.LIKE)
        fake.stall()
        fake.send_photo(USER, image_bytes(2))  # its update is never fetched, nor answered
        time.sleep(0.5)
        started = time.monotonic()
        bot.send_signal(signal.SIGTERM)
        code = bot.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        if bot.poll() is None:
            bot.kill()
        bot.communicate()
    print(f"SIGTERM to exit with a stalled Bot API: {took:.2f} s")
    assert code == 0 and took <= 5.0, (code, took)
    with sqlite3.connect(data_dir / "tastebot.sqlite3") as db:
        assert db.execute("SELECT vote FROM feedback").fetchall() == [("like",)]


def test_a_missing_clip_model_is_one_line_and_exit_code_1(
    api: tuple[FakeBotAPI, str], tmp_path: Path
) -> None:
    fake, url = api
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_URL": url,
        "CLIP_MODEL": str(tmp_path / "no-such-clip"),
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_LEVEL": "WARNING",  # the INFO lines of a normal start are not what is checked
    }
    result = run_bot_once(env, tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tastebot: "), result.stderr
    assert "no-such-clip" in lines[0] and "Traceback" not in result.stderr
