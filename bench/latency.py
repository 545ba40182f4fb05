"""Photo in → reply out, through `python -m bot` as a person runs it.

Builds a ViT-B/32-sized random CLIP (or uses --model DIR), serves a fake Bot API on
127.0.0.1, starts the bot as a subprocess and sends it photos one at a time (each a
different 1280×720 JPEG). Reports the time from the update being available to
the bot's sendMessage reaching the fake API: median and p95.

    python -m bench.latency [--photos 30] [--model DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.fake_bot_api import FakeBotAPI
from tests.tiny_clip import build_clip, vit_b32_config

USER = 42


def screenshot(seed: int) -> bytes:
    """A 1280×720 JPEG with smooth structure (compresses like a real screenshot, not noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(9, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((1280, 720), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=30)
    parser.add_argument("--model", type=Path, help="a CLIP directory (default: random ViT-B/32)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_clip(Path(tmp) / "clip", vit_b32_config())
        api = FakeBotAPI()
        with api.serve() as url:
            env = {
                **os.environ,
                "TELEGRAM_BOT_TOKEN": api.token,
                "TELEGRAM_API_URL": url,
                "CLIP_MODEL": str(model),
                "DATA_DIR": str(Path(tmp) / "data"),
                "LOG_LEVEL": "WARNING",
                "HF_HUB_OFFLINE": "1",
            }
            bot = subprocess.Popen([sys.executable, "-m", "bot"], env=env, cwd=tmp)
            try:
                api.wait_for_call_sync("setMyCommands", timeout=300)  # model loaded, polling
                times = []
                for i in range(args.photos + 1):
                    before = len(api.sent_messages(chat_id=USER))
                    started = time.perf_counter()
                    api.send_photo(USER, screenshot(i))
                    api.wait_for_sync(lambda b=before: len(api.sent_messages(chat_id=USER)) > b, 60)
                    if i:  # the first photo warms up torch
                        times.append(time.perf_counter() - started)
            finally:
                bot.send_signal(signal.SIGTERM)
                bot.wait(timeout=30)
        api.close()

    times_ms = sorted(t * 1000 for t in times)
    p95 = times_ms[min(len(times_ms) - 1, int(round(0.95 * (len(times_ms) - 1))))]
    print(f"photos: {len(times_ms)}  model: {'given' if args.model else 'random ViT-B/32'}")
    print(
        f"photo → reply: median {statistics.median(times_ms):.0f} ms, p95 {p95:.0f} ms, "
        f"min {times_ms[0]:.0f} ms"
    )


if __name__ == "__main__":
    main()
