"""Every setting, read once from the environment and `.env` (see .env.example)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    telegram_bot_token: SecretStr
    # A self-hosted telegram-bot-api server lifts the 20 MB download limit.
    telegram_api_url: str = "https://api.telegram.org"
    clip_model: str = "openai/clip-vit-base-patch32"
    data_dir: Path = Path("./data")
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()

    # Scheduled retraining of each person's head.
    retrain_min_new_votes: int = Field(5, ge=1)
    retrain_check_minutes: float = Field(5.0, gt=0)
    # A person needs this many votes, with at least one like and one dislike,
    # before a head is trained; until then the score comes from the cold-start prior.
    head_min_votes: int = Field(6, ge=2)

    # Input limits. Telegram's cloud Bot API serves files up to 20 MB.
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    # Keep image files on disk: backbone fine-tuning needs them. Off = delete after embedding.
    retain_images: bool = True

    # "looks like N images you liked": liked images at least this similar (cosine).
    similar_threshold: float = Field(0.8, ge=-1, le=1)
    similar_neighbours: int = Field(10, ge=1)

    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(0, ge=0)  # 0 = torch's default
    log_level: str = "INFO"

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(int(part) for part in value.replace(" ", "").split(",") if part)
        return value

    @field_validator("telegram_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")
