"""`python -m bot --role worker` and `--role trainer` as two processes over one DATA_DIR:
the worker answers on a fake Bot API and queues training, the trainer (no token) trains,
and the worker tells the person and scores with the new model, neither restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from domain import Vote
from testing.fake_bot_api import FakeBotAPI
from tests.test_process import USER, api, reply_to_photo, vote

__all__ = ["api"]  # the fixture, used by name
ROOT = Path(__file__).resolve().parent.parent


def start(role: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "--role", role],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_worker_and_a_trainer_process(
    api: tuple[FakeBotAPI, str], clip_dir: Path, tmp_path: Path
) -> None:
    fake, url = api
    shared = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),  # this checkout's bot, whatever the environment installed
        "CLIP_MODEL": str(clip_dir),
        "DATA_DIR": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
        "DUPLICATE_THRESHOLD": "0.9995",  # the tiny random CLIP puts all images close together
        "JOB_POLL_SECONDS": "0.2",
    }
    worker_env = shared | {"TELEGRAM_BOT_TOKEN": fake.token, "TELEGRAM_API_URL": url}
    worker = start("worker", worker_env, tmp_path)
    trainer = None
    try:
        replies = [reply_to_photo(fake, seed) for seed in range(1, 11)]
        trainer = start("trainer", shared, tmp_path)  # no token at all
        for seed, reply in enumerate(replies, start=1):
            vote(fake, reply, Vote.LIKE if seed % 2 else Vote.DISLIKE)
        fake.wait_for_sync(
            lambda: any(
                "taste model is ready" in m.get("text", "")
                for m in fake.sent_messages(chat_id=USER)
            ),
            timeout=90,
        )
        assert "· model v1" in reply_to_photo(fake, 50)["text"]
        for process in (worker, trainer):
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=15) for process in (worker, trainer)]
    finally:
        logs = []
        for process in (worker, trainer):
            if process is not None:
                if process.poll() is None:
                    process.kill()
                logs.append(process.communicate()[0])
    assert codes == [0, 0], logs
    assert "role trainer" in logs[1] and "role worker" in logs[0], logs
    assert "queued a head job" in logs[0]


def test_an_unknown_role_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "--role", "boss"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert result.returncode == 2 and "invalid choice: 'boss'" in result.stderr
