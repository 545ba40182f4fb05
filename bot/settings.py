"""Every setting, read once from the environment and `.env` (see .env.example)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.cron import crontab_trigger
from learner.model_source import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_REVISION
from storage.files import DataDir
from storage.urls import parse_database_url, sqlite_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # At least one platform token; both = both platforms in one process, one event loop.
    telegram_bot_token: SecretStr | None = None
    # A self-hosted telegram-bot-api server lifts the 20 MB download limit.
    telegram_api_url: str = "https://api.telegram.org"
    # Outgoing messages per second, all chats together: Telegram's limit for a bot is ~30
    # (paid broadcasts lift it); a burst of photos is answered no faster than this.
    telegram_messages_per_second: float = Field(30.0, gt=0)
    clip_model: str = DEFAULT_CLIP_MODEL
    # The hub revision (a commit) CLIP_MODEL is loaded at. Unset: the pinned commit for the
    # default model, none (the hub's latest) for another; "main" = the latest. A local
    # directory has no revisions.
    clip_revision: str | None = None
    data_dir: Path = Path("./data")
    # Retained image files; unset = DATA_DIR/images. Every process (worker, trainer) must
    # reach the same directory: a shared filesystem across machines.
    image_dir: Path | None = None
    # sqlite:///path or postgresql://user:password@host:5432/dbname. Empty: the SQLite file
    # DATA_DIR/tastebot.sqlite3 (what every install before this setting used).
    database_url: str = ""
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()  # Telegram user ids

    discord_bot_token: SecretStr | None = None
    discord_admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()  # Discord user ids
    # Server channels where every image is scored; elsewhere only when the bot is mentioned.
    discord_channel_ids: Annotated[frozenset[int], NoDecode] = frozenset()

    # Scheduled retraining of each person's head.
    # Webhook mode (instead of long polling) when WEBHOOK_URL is set: the public HTTPS URL
    # Telegram posts updates to; the bot listens on WEBHOOK_LISTEN:WEBHOOK_PORT at its path.
    webhook_url: str | None = None
    webhook_listen: str = "0.0.0.0"
    webhook_port: int = Field(8443, ge=1, le=65535)
    # Checked on every webhook request; empty = a random one per start.
    webhook_secret: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,256}$")
    # /healthz and /metrics: on the webhook's server in webhook mode; with long polling (or
    # Discord alone) on HTTP_LISTEN:HTTP_PORT, 0 = no HTTP server.
    http_listen: str = "127.0.0.1"
    http_port: int = Field(0, ge=0, le=65535)
    # The durable inbox: an update whose process died mid-handling is taken over by another
    # process once its lease (renewed every third of it while handling) has run out.
    inbox_lease_seconds: float = Field(30.0, ge=3)
    # Handled updates are kept this long, so a redelivered one is recognised and skipped.
    inbox_retention_hours: float = Field(24.0, gt=0)

    retrain_min_new_votes: int = Field(5, ge=1)
    # A person is retrained in the background as soon as their votes allow a first model (and
    # then every RETRAIN_MIN_NEW_VOTES new votes), once they have paused voting this long;
    # the scheduled check every RETRAIN_CHECK_MINUTES is the backstop. Off: the schedule only.
    retrain_after_votes: bool = True
    retrain_pause_seconds: float = Field(2.0, ge=0)
    retrain_check_minutes: float = Field(5.0, gt=0)
    # The crowd model (everyone's votes): trained once CROWD_MIN_VOTES votes from
    # CROWD_MIN_PEOPLE people exist, then again after CROWD_MIN_NEW_VOTES new votes,
    # checked every CROWD_CHECK_MINUTES.
    crowd_min_people: int = Field(3, ge=2)
    crowd_min_votes: int = Field(50, ge=1)
    crowd_min_new_votes: int = Field(50, ge=1)
    crowd_check_minutes: float = Field(30.0, gt=0)
    # A person needs this many votes, with at least one like and one dislike,
    # before a head is trained; until then the score comes from the cold-start prior.
    head_min_votes: int = Field(6, ge=2)
    # Head files kept for rollback besides the active one (0 = all); older rows stay listed.
    head_files_kept: int = Field(20, ge=0)

    # Fine-tuning the CLIP backbone (scheduled by FINETUNE_CRON, or /retrain full).
    finetune_min_votes: int = Field(200, ge=1)  # votes with retained images
    finetune_min_new_votes: int = Field(100, ge=1)  # since the last fine-tune (scheduled runs)
    finetune_cron: str = "0 3 * * *"  # crontab (minute hour day month weekday); empty = never
    finetune_head_epochs: int = Field(10, ge=0)
    finetune_encoder_epochs: int = Field(3, ge=0)
    finetune_unfreeze_blocks: int = Field(4, ge=0)  # top vision blocks trained; ≥ depth = all
    finetune_contrastive_weight: float = Field(0.0, ge=0)  # supervised-contrastive term; 0 = off

    # Captions (and text read from images by OCR, where Tesseract is installed) embedded
    # with CLIP's text tower and mixed into what the heads see: normalise(image + w·text).
    # 0 = off, the default: whether text helps could not be measured yet (see README).
    text_weight: float = Field(0.0, ge=0)
    ocr: bool = True  # with TEXT_WEIGHT > 0: also read text in images (in the background)

    # Input limits. Telegram's cloud Bot API serves files up to 20 MB.
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    # Keep image files on disk: backbone fine-tuning needs them. Off = delete after embedding.
    retain_images: bool = True

    # "looks like N images you liked": liked images at least this similar (cosine).
    similar_threshold: float = Field(0.8, ge=-1, le=1)
    similar_neighbours: int = Field(10, ge=1)
    # A new image this similar (cosine) to one the person voted on counts as "rated before".
    duplicate_threshold: float = Field(0.98, ge=-1, le=1)
    # Per-person limit on incoming images; the excess gets a polite "slow down".
    images_per_minute: int = Field(30, ge=1)
    # An album's images arrive as separate updates: reply once none arrived for this long.
    album_wait_seconds: float = Field(1.0, gt=0)

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 0 = every usable core but one (the event loop, downloads and decoding need a core).
    torch_threads: int = Field(0, ge=0)
    # CLIP's precision: auto = bf16 on CUDA and on CPUs with native bf16, else fp32 (fp16 on
    # CUDA without bf16). Embeddings are float32 and within cosine 0.999 of fp32 either way.
    # int8 (OpenVINO only, opt-in): weight-only int8, checked on a random model only.
    clip_precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    # Which engine runs CLIP's vision tower: auto = OpenVINO where installed and working on
    # this CPU (converted once per encoder version into DATA_DIR/engines), else torch.
    clip_engine: Literal["auto", "torch", "openvino"] = "auto"
    # Micro-batching: images that arrive while a forward pass runs share the next one (at
    # most EMBED_BATCH_MAX). A pass may also wait EMBED_BATCH_WAIT_MS after its first image
    # for others; 0 (measured best: bench/speed.py) starts a lone image at once.
    embed_batch_max: int = Field(32, ge=1)
    embed_batch_wait_ms: float = Field(0.0, ge=0)
    # Trained heads kept in memory, one per person (up to ~8 MB each at 2,000 images).
    head_cache_people: int = Field(256, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # What this process runs (`python -m bot --role` overrides it): all = chat platforms and
    # training in one process; worker = platforms, scoring and votes, training handed to a
    # trainer through the jobs table; trainer = the training schedule and the jobs, no
    # platform (no token needed). Every process must reach the same DATA_DIR and database.
    role: Literal["all", "worker", "trainer"] = "all"
    # A trainer looks for jobs (and a worker for messages a trainer left) this often.
    job_poll_seconds: float = Field(1.0, gt=0)
    # A claimed job is another trainer's to take over once its lease runs out; a live
    # trainer renews it every third of this while the job runs.
    job_lease_seconds: float = Field(120.0, ge=3)
    job_max_attempts: int = Field(3, ge=1)  # a job whose trainer died this often: failed
    # How often a process checks for a crowd model (or CLIP fine-tune) another promoted.
    model_refresh_seconds: float = Field(10.0, ge=0)

    @field_validator(
        "telegram_bot_token",
        "discord_bot_token",
        "webhook_url",
        "webhook_secret",
        "image_dir",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `.env.example` lists both keys empty: an empty token means "not this platform".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("admin_ids", "discord_admin_ids", "discord_channel_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        parts = [part for part in value.replace(" ", "").split(",") if part]
        for part in parts:
            if not (part.isascii() and part.isdigit()):
                raise ValueError(
                    f"{part!r} is not a user id; list numeric ids separated by commas "
                    "(how to find yours: .env.example)"
                )
        return frozenset(int(part) for part in parts)

    @field_validator("finetune_cron")
    @classmethod
    def _a_crontab_line(cls, value: str) -> str:
        # Checked here, so a typo is one line at start-up, not a traceback once connected.
        value = value.strip()
        if value:
            crontab_trigger(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _a_database_url(cls, value: str) -> str:
        value = value.strip()
        if value:
            parse_database_url(value)  # one line naming what is accepted, before connecting
        return value

    def database(self) -> str:
        """DATABASE_URL, or the SQLite file in DATA_DIR when it is empty (resolved on use:
        a copy with another DATA_DIR gets that dir's database)."""
        return self.database_url or sqlite_url(DataDir(self.data_dir).database)

    @field_validator("telegram_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("clip_revision", mode="before")
    @classmethod
    def _blank_revision_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _revision_of_this_model(self) -> Settings:
        # The default pin names a commit of the default model only.
        if self.clip_model == DEFAULT_CLIP_MODEL and self.clip_revision is None:
            self.clip_revision = DEFAULT_CLIP_REVISION
        elif self.clip_model != DEFAULT_CLIP_MODEL and self.clip_revision == DEFAULT_CLIP_REVISION:
            self.clip_revision = None
        return self

    @model_validator(mode="after")
    def _some_platform(self) -> Settings:
        # A trainer talks to no platform; the other roles need one.
        if self.role == "trainer":
            return self
        if self.telegram_bot_token is None and self.discord_bot_token is None:
            raise ValueError(NO_TOKEN)
        return self

    @model_validator(mode="after")
    def _one_webhook_secret(self) -> Settings:
        # Each start without a secret sets a random one with setWebhook: behind a load
        # balancer, Telegram would then send the last worker's secret, and the others
        # would refuse every update it gives them.
        if self.role == "worker" and self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError(
                "WEBHOOK_SECRET must be set, the same on every worker, when workers share "
                "a WEBHOOK_URL"
            )
        return self


NO_TOKEN = "neither TELEGRAM_BOT_TOKEN nor DISCORD_BOT_TOKEN is set"
