"""Test doubles shared by tests/ and bench/: a fake Telegram Bot API on 127.0.0.1 and a
tiny random-weight CLIP saved the way a real one is. Not imported by the bot itself."""
