"""Load and soak: many people, photos and votes at once, then `kill -9` during the load.

    python -m bench.soak [--people 50] [--photos 1000] [--kills 5] [--kill-photos 500]
                         [--model DIR | --vit-b32] [--seed 0]

``python -m bot`` runs as a subprocess against the fake Bot API (testing/fake_bot_api.py) on
127.0.0.1 with a fresh DATA_DIR. Simulated people send distinct generated photos (at most
two in flight each) and tap the vote buttons under the replies while later photos are still
in flight: some people change their vote later, some tap the same button twice at once, some
never vote. The bench tracks every tap it made and which ones were *acknowledged*
(answerCallbackQuery with "Saved: …" / "Already saved: …"); per (person, submission) the
value of the last acknowledged tap is what the database must hold. One person never has two
different values in flight for one submission (they wait for the spinner), so "last
acknowledged" is well defined.

Phase 1, no kills: ``--photos`` photos. Replies, error replies ("Something went wrong…", a
refusal, an error in a callback answer), the bot's RSS (VmRSS of its process) at start,
after warm-up (20 % of the photos answered), in the middle and at the end (flat: at most
max(64 MiB, 10 %) more at the end than after warm-up), and the load average. Then
SIGTERM, and checks:
the feedback table holds exactly one row per acknowledged (person, submission) with the last
acknowledged vote and no other rows; the number of vote changes the database counted (its
revision counter) equals the number the bench expects; every duplicate tap was answered
"Already saved"; FAISS == SQLite (below).

Phase 2, ``--kills`` cycles: restart on the same DATA_DIR, load (``--kill-photos`` photos in
all), SIGKILL at a random moment during it, restart. Updates the bot had fetched but not
confirmed stay queued in the fake (as in Telegram) and are delivered again to the restarted
bot. Updates the dead bot had confirmed are gone from Telegram, but the bot stores every
update in its durable inbox before confirming it, so the restarted bot answers them too: the
person just waits, and the check is that every photo and tap confirmed by a killed bot was
answered after its restart (none sent or tapped again). At the end, a clean SIGTERM, then:
no acknowledged vote lost or doubled (same checks as phase 1), and FAISS consistent with
SQLite: for each person, the ids in ``liked-<user id>.faiss`` / ``disliked-<user id>.faiss``
(DATA_DIR/faiss/<encoder>/) equal the image ids SQLite says they liked / disliked, with no id
twice.

The default model is a tiny random CLIP (testing/tiny_clip.py), so the run takes minutes on 2
cores; ``--vit-b32`` uses a ViT-B/32-sized random one; random CLIPs put every picture close
together, so DUPLICATE_THRESHOLD=0.9995 is set for them. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import heapq
import io
import itertools
import os
import random
import re
import shutil
import signal
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bot.telegram_adapter.callback_data import decode_vote, encode_vote
from domain import Vote
from testing.fake_bot_api import FakeBotAPI

FIRST_USER = 500_000
VOTES = [Vote.DISLIKE, Vote.LIKE, Vote.SUPER_LIKE]
ROOT = Path(__file__).resolve().parents[1]


def photo(seed: int) -> bytes:
    """A distinct 480×360 JPEG per seed: a few smooth colour waves (like a real picture,
    not noise), different in every channel."""
    rng = np.random.default_rng(seed)
    w, h = 480, 360
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pixels = np.zeros((h, w, 3), np.float32)
    for channel in range(3):
        for _ in range(3):
            cx, cy = rng.uniform(-w, 2 * w), rng.uniform(-h, 2 * h)
            freq, amp = rng.uniform(0.005, 0.08), rng.uniform(20, 60)
            pixels[..., channel] += amp * np.sin(freq * np.hypot(xx - cx, yy - cy))
    pixels += rng.uniform(60, 190, size=3)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=85)
    return out.getvalue()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def quiet_connection_resets() -> None:
    """A killed bot resets its open connections to the fake's HTTP server; socketserver would
    print a traceback for each. That is the point of the exercise, not news."""
    default = socketserver.BaseServer.handle_error

    def handle_error(self: socketserver.BaseServer, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            default(self, request, client_address)

    socketserver.BaseServer.handle_error = handle_error  # type: ignore[method-assign]


# -- the bot process -------------------------------------------------------------------------


class BotProcess:
    """`python -m bot` on DATA_DIR against the fake; one object per start."""

    def __init__(
        self,
        api: FakeBotAPI,
        url: str,
        model: Path,
        data: Path,
        env: dict[str, str],
        log_path: Path,
    ) -> None:
        self.api = api
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115
        ready_before = len(api.calls_to("setMyCommands"))
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot"],
            env={
                **os.environ,
                "TELEGRAM_BOT_TOKEN": api.token,
                "TELEGRAM_API_URL": url,
                "CLIP_MODEL": str(model),
                "DATA_DIR": str(data),
                "LOG_LEVEL": "WARNING",
                "HF_HUB_OFFLINE": "1",
                "IMAGES_PER_MINUTE": "1000000",  # the simulated people are not spammers
                **env,
            },
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the bot exited with {self.process.returncode}; see {log_path}")
            return len(api.calls_to("setMyCommands")) > ready_before

        api.wait_for_sync(ready, timeout=600)  # model loaded, FAISS synced, about to poll
        self.start_seconds = time.monotonic() - self.started

    def rss(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in MiB."""
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
            if ":" in line
        )
        return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)
        self.log.close()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        finally:
            self.log.close()

    def log_errors(self) -> list[str]:
        return error_records(self.log_path)


def error_records(log_path: Path) -> list[str]:
    """Each ERROR/CRITICAL record of a bot's log, with its traceback."""
    entries: list[str] = []
    current: list[str] | None = None
    for line in log_path.read_text(errors="replace").splitlines():
        if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line):  # a new record
            if current:
                entries.append("\n".join(current))
            current = [line] if re.search(r" (ERROR|CRITICAL) ", line) else None
        elif current is not None:
            current.append(line)
        elif line.startswith("Traceback"):  # printed outside logging
            current = [line]
    if current:
        entries.append("\n".join(current))
    return [f"[{log_path.name}] {entry}" for entry in entries]


# -- the simulated people --------------------------------------------------------------------


@dataclass
class Photo:
    user: int
    seed: int
    message_id: int
    update_id: int
    sent: float
    replies: int = 0
    replied: float = 0.0
    inboxed: bool = False  # the bot stored and confirmed its update, then died before answering


@dataclass
class Tap:
    query_id: str
    update_id: int
    vote: Vote
    duplicate: bool  # the second of two simultaneous taps on the same button
    pair: str = ""  # the first tap's query id, for both taps of a double tap
    sent: float = field(default_factory=time.monotonic)
    acked: str | None = None  # the answer's text
    inboxed: bool = False  # confirmed by a bot that died before answering: the inbox has it


@dataclass
class Target:
    """One (person, submission) the buttons act on."""

    user: int
    submission: int
    message: dict[str, Any]  # the bot's reply carrying the buttons
    intent: Vote | None = None  # the value of the person's latest tap
    acked: Vote | None = None  # the value of the last acknowledged tap
    outstanding: dict[str, Tap] = field(default_factory=dict)
    changes_acked: int = 0  # "Saved: …" answers
    retap_scheduled: bool = False


@dataclass
class Figures:
    photos_sent: int = 0
    replies: int = 0
    answered_twice: int = 0
    rated_before: int = 0
    error_replies: list[str] = field(default_factory=list)
    notifications: int = 0
    taps: int = 0
    duplicate_taps: int = 0
    vote_changes_tapped: int = 0
    acks: int = 0
    callback_errors: list[str] = field(default_factory=list)
    late_answers_refused: int = 0
    taps_inboxed: int = 0
    taps_redelivered: int = 0
    photos_inboxed: int = 0
    photos_redelivered: int = 0


class Load:
    def __init__(self, api: FakeBotAPI, people: int, rng: random.Random) -> None:
        self.api = api
        self.rng = rng
        self.users = list(range(FIRST_USER, FIRST_USER + people))
        self.seeds = itertools.count(1)
        self.photos: dict[tuple[int, int], Photo] = {}  # (user, message id)
        self.in_flight: dict[int, set[int]] = {u: set() for u in self.users}
        self.targets: dict[tuple[int, int], Target] = {}  # (user, submission id)
        self.taps: dict[str, tuple[Target, Tap]] = {}
        self.actions: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self.action_ids = itertools.count()
        self.seen_calls = 0
        self.figures = Figures()
        self.budget = 0  # photos still to send in this phase
        self.next_send: dict[int, float] = dict.fromkeys(self.users, 0.0)
        self.pair_saved: Counter[str] = Counter()  # "Saved" answers per double tap
        self.tap_latency: list[float] = []
        self.voting = True  # False: people look at their replies and tap nothing

    # scheduling

    def later(self, delay: float, action: str, *args: Any) -> None:
        heapq.heappush(
            self.actions, (time.monotonic() + delay, next(self.action_ids), action, args)
        )

    def run_due(self) -> None:
        now = time.monotonic()
        while self.actions and self.actions[0][0] <= now:
            _, _, action, args = heapq.heappop(self.actions)
            getattr(self, action)(*args)

    # sending

    def send_photos(self) -> None:
        now = time.monotonic()
        for user in self.users:
            if self.budget <= 0:
                return
            if len(self.in_flight[user]) < 2 and self.next_send[user] <= now:
                self.send_photo(user, next(self.seeds))
                self.budget -= 1
                self.next_send[user] = now + self.rng.uniform(0.0, 0.4)

    def send_photo(self, user: int, seed: int) -> None:
        update = self.api.send_photo(user, photo(seed))
        message_id = update["message"]["message_id"]
        self.photos[(user, message_id)] = Photo(
            user, seed, message_id, update["update_id"], time.monotonic()
        )
        self.in_flight[user].add(message_id)
        self.figures.photos_sent += 1

    def tap(self, key: tuple[int, int], vote: Vote, twice: bool = False) -> None:
        target = self.targets[key]
        if target.outstanding:  # still spinning: wait for it
            self.later(0.2, "tap", key, vote, twice)
            return
        target.retap_scheduled = False
        if target.intent is not None and vote is not target.intent:
            self.figures.vote_changes_tapped += 1
        target.intent = vote
        data = encode_vote(target.submission, vote)
        pair = ""
        for i in range(2 if twice else 1):
            update = self.api.press_button(target.user, target.message, data)
            tap = Tap(update["callback_query"]["id"], update["update_id"], vote, duplicate=i == 1)
            if twice:
                pair = pair or tap.query_id
                tap.pair = pair
            target.outstanding[tap.query_id] = tap
            self.taps[tap.query_id] = (target, tap)
            self.figures.taps += 1
            self.figures.duplicate_taps += tap.duplicate

    # what the bot did

    def read_calls(self) -> None:
        with self.api._lock:
            calls = self.api.calls[self.seen_calls :]
            self.seen_calls = len(self.api.calls)
        for call in calls:
            # A photo rated before is answered with that picture (sendPhoto, a caption).
            if call.method in ("sendMessage", "sendPhoto") and call.ok:
                self.on_message(call.result, call.time)
            elif call.method == "answerCallbackQuery":
                self.on_answer(call)

    def on_message(self, message: dict[str, Any], now: float) -> None:
        text = message.get("text") or message.get("caption") or ""
        user = message["chat"]["id"]
        quoted = message.get("reply_to_message")
        if text.startswith("Something went wrong"):
            self.figures.error_replies.append(text)
        if quoted is None:
            if text.startswith("Your taste model"):  # a new or better model of theirs
                self.figures.notifications += 1
            elif not text.startswith("Something went wrong"):
                self.figures.error_replies.append(f"unexpected: {text[:80]}")
            return
        sent = self.photos.get((user, quoted["message_id"]))
        if sent is None:
            self.figures.error_replies.append(f"reply to an unknown message: {text[:80]}")
            return
        sent.replies += 1
        sent.replied = sent.replied or now
        self.in_flight[user].discard(sent.message_id)
        if sent.replies > 1:
            self.figures.answered_twice += 1
            return
        self.figures.replies += 1
        buttons = [
            b["callback_data"]
            for row in (message.get("reply_markup") or {}).get("inline_keyboard", [])
            for b in row
            if "callback_data" in b
        ]
        votes = [parsed for data in buttons if (parsed := decode_vote(data))]
        if not votes:  # a refusal ("not an image", "slow down", …)
            if not text.startswith("Something went wrong"):
                self.figures.error_replies.append(f"refused: {text[:80]}")
            return
        if "rated this before" in text:
            self.figures.rated_before += 1
        key = (user, votes[0][0])
        if key not in self.targets:
            self.targets[key] = Target(user, votes[0][0], message)
        roll = self.rng.random()
        if roll < 0.1 or not self.voting:
            return  # never votes on this one
        self.later(self.rng.uniform(0.05, 2.0), "tap", key, self.rng.choice(VOTES), roll < 0.25)

    def on_answer(self, call: Any) -> None:
        query_id = str(call.params.get("callback_query_id"))
        text = str(call.params.get("text") or "")
        if not call.ok:  # a redelivered query the dead bot had already answered
            self.figures.late_answers_refused += 1
            return
        found = self.taps.get(query_id)
        if found is None:
            self.figures.callback_errors.append(f"answer to an unknown query: {text}")
            return
        target, tap = found
        if not text.startswith(("Saved:", "Already saved:")):
            self.figures.callback_errors.append(text)
            target.outstanding.pop(query_id, None)
            self.ensure_intent(target)
            return
        if tap.acked is not None:
            self.figures.callback_errors.append(f"answered twice: {query_id} {text}")
            return
        tap.acked = text
        self.tap_latency.append(call.time - tap.sent)
        self.figures.acks += 1
        target.outstanding.pop(query_id, None)
        target.acked = tap.vote
        if text.startswith("Saved:"):
            target.changes_acked += 1
            if tap.pair:
                self.pair_saved[tap.pair] += 1
        if not target.outstanding and self.rng.random() < 0.25 and tap.vote is target.intent:
            # a change of mind a little later
            other = self.rng.choice([v for v in VOTES if v is not tap.vote])
            self.later(self.rng.uniform(0.2, 3.0), "tap", (target.user, target.submission), other)
        self.ensure_intent(target)

    def ensure_intent(self, target: Target) -> None:
        """A person whose tap went unanswered taps again."""
        if (
            not target.outstanding
            and target.intent is not None
            and target.acked is not target.intent
            and not target.retap_scheduled
        ):
            target.retap_scheduled = True
            self.later(
                self.rng.uniform(0.1, 1.0), "tap", (target.user, target.submission), target.intent
            )

    # a crash

    def after_kill(self) -> dict[str, int]:
        """The bot is dead: what Telegram will deliver again, and what it will not because the
        dead bot confirmed it. The bot stored those in its inbox first, so the restarted bot
        answers them: the person just waits (no tap again, no photo sent again)."""
        self.read_calls()
        pending = {u["update_id"] for u in self.api.pending_updates}
        counts = Counter[str]()
        for target in self.targets.values():
            for tap in target.outstanding.values():
                if tap.update_id in pending:
                    counts["taps redelivered"] += 1
                elif not tap.inboxed:
                    tap.inboxed = True
                    counts["taps in the inbox"] += 1
        for sent in self.photos.values():
            if sent.replies:
                continue
            if sent.update_id in pending:
                counts["photos redelivered"] += 1
            elif not sent.inboxed:
                sent.inboxed = True
                counts["photos in the inbox"] += 1
        self.figures.taps_inboxed += counts["taps in the inbox"]
        self.figures.taps_redelivered += counts["taps redelivered"]
        self.figures.photos_inboxed += counts["photos in the inbox"]
        self.figures.photos_redelivered += counts["photos redelivered"]
        return dict(counts)

    def never_answered(self) -> tuple[int, int]:
        """Photos and taps the dead bot confirmed that no later bot answered."""
        photos = sum(1 for p in self.photos.values() if p.inboxed and not p.replies)
        taps = sum(
            1
            for target in self.targets.values()
            for tap in target.outstanding.values()
            if tap.inboxed and tap.acked is None
        )
        return photos, taps

    # driving

    def step(self) -> None:
        self.read_calls()
        self.run_due()
        self.send_photos()

    def busy(self) -> bool:
        return (
            self.budget > 0
            or bool(self.actions)
            or any(self.in_flight.values())
            or any(t.outstanding for t in self.targets.values())
        )

    def run_until(self, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(self.describe())
            self.step()
            with self.api._cond:
                self.api._cond.wait(0.02)

    def describe(self) -> str:
        waiting = sum(len(v) for v in self.in_flight.values())
        spinning = sum(len(t.outstanding) for t in self.targets.values())
        return (
            f"photos to send {self.budget}, awaiting a reply {waiting}, taps awaiting an "
            f"answer {spinning}, scheduled actions {len(self.actions)}"
        )

    def replied(self) -> int:
        return self.figures.replies


# -- checks ----------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


Query = Callable[[str], list[tuple[Any, ...]]]


def sqlite_query(database: Path) -> Query:
    """Read-only SQL on the bot's SQLite file, one connection per query."""

    def run(sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            return list(db.execute(sql).fetchall())
        finally:
            db.close()

    return run


def check_votes(load: Load, query: Query, phase: str) -> list[Check]:
    """The votes the database holds against the taps the people saw acknowledged. ``query``
    runs SQL on the bot's database (SQLite or PostgreSQL: the SQL is portable)."""
    rows = query(
        "SELECT u.platform_user_id, f.submission_id, f.vote FROM feedback f"
        " JOIN users u ON u.id = f.user_id WHERE u.platform = 'telegram'"
    )
    [(max_revision,)] = query("SELECT COALESCE(MAX(revision), 0) FROM feedback")
    [(distinct_revisions,)] = query("SELECT COUNT(DISTINCT revision) FROM feedback")
    [(submissions,)] = query("SELECT COUNT(*) FROM submissions")
    [(duplicate_submissions,)] = query(
        "SELECT COUNT(*) FROM (SELECT 1 FROM submissions GROUP BY user_id, chat_id, message_id"
        " HAVING COUNT(*) > 1) AS twice"
    )
    stored: dict[tuple[int, int], list[str]] = {}
    for user, submission, vote in rows:
        stored.setdefault((int(user), int(submission)), []).append(vote)
    expected = {k: t.acked.value for k, t in load.targets.items() if t.acked is not None}
    unanswered = [k for k, t in load.targets.items() if t.intent is not None and t.acked is None]
    lost = [k for k in expected if k not in stored]
    wrong = [k for k, v in expected.items() if k in stored and stored[k] != [v]]
    doubled = [k for k, v in stored.items() if len(v) > 1]
    extra = [k for k in stored if k not in expected]
    changes = sum(t.changes_acked for t in load.targets.values())
    saved_twice = [pair for pair, n in load.pair_saved.items() if n > 1]
    checks = [
        Check(
            f"{phase}: every tap answered in the end",
            not unanswered,
            f"{len(unanswered)} (person, submission) with a tap never acknowledged",
        ),
        Check(
            f"{phase}: no acknowledged vote lost",
            not lost,
            f"{len(expected)} acknowledged, {len(lost)} missing {lost[:5]}",
        ),
        Check(
            f"{phase}: stored vote = last acknowledged",
            not wrong,
            f"{len(wrong)} differ {[(k, stored[k], expected[k]) for k in wrong[:5]]}",
        ),
        Check(
            f"{phase}: one row per (person, submission)",
            not doubled,
            f"{len(rows)} rows, {len(doubled)} doubled",
        ),
        Check(f"{phase}: no row nobody acknowledged", not extra, f"{len(extra)} extra {extra[:5]}"),
        Check(
            f"{phase}: a double tap saved once",
            not saved_twice,
            f"{load.figures.duplicate_taps} double taps, {len(saved_twice)} answered 'Saved' twice",
        ),
        Check(
            f"{phase}: one submission per message",
            duplicate_submissions == 0,
            f"{submissions} submissions, {duplicate_submissions} messages stored twice",
        ),
    ]
    unique = distinct_revisions == len(rows)
    if load.figures.taps_inboxed == 0 and load.figures.taps_redelivered == 0:
        # No crash: every change the database counted was answered "Saved", exactly once.
        ok, note = max_revision == changes, ""
    else:
        # After a kill a change can be committed and never answered; never the other way.
        ok, note = changes <= max_revision, " (≤: a change committed just before a kill)"
    checks.append(
        Check(
            f"{phase}: vote changes counted once",
            ok and unique,
            f"revision counter {max_revision}, 'Saved' answers {changes}{note}; "
            f"{distinct_revisions} distinct revisions in {len(rows)} rows",
        )
    )
    return checks


def faiss_ids(path: Path) -> list[int]:
    import faiss

    index = faiss.read_index(str(path))
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return [int(i) for i in faiss.vector_to_array(index.id_map)]
    if isinstance(index, faiss.IndexIVF):  # storage.vectors keeps ids in the inverted lists
        ids: list[int] = []
        invlists = index.invlists
        if invlists is None:
            raise TypeError(f"{path}: an IVF index without inverted lists")
        for list_no in range(index.nlist):
            size = invlists.list_size(list_no)
            if size:
                ptr = invlists.get_ids(list_no)
                try:
                    ids += [int(i) for i in faiss.rev_swig_ptr(ptr, size)]
                finally:
                    # in faiss's C++ API (and at runtime), missing from its type stubs
                    invlists.release_ids(list_no, ptr)  # type: ignore[attr-defined]
        return ids
    raise TypeError(f"{path}: unexpected index type {type(index).__name__}")


def check_faiss(data: Path, query: Query, phase: str) -> list[Check]:
    """The FAISS files in DATA_DIR against the votes in the database."""
    users = [int(r[0]) for r in query("SELECT id FROM users")]
    wanted: dict[tuple[str, int], set[int]] = {}
    for user in users:
        wanted[("liked", user)], wanted[("disliked", user)] = set(), set()
    for user, image, vote in query(
        "SELECT f.user_id, s.image_id, f.vote FROM feedback f"
        " JOIN submissions s ON s.id = f.submission_id"
    ):
        wanted[("disliked" if vote == "dislike" else "liked", int(user))].add(int(image))
    folders = (
        [p for p in (data / "faiss").iterdir() if p.is_dir()] if (data / "faiss").exists() else []
    )
    if len(folders) != 1:
        return [Check(f"{phase}: FAISS == SQLite", False, f"encoder folders: {folders}")]
    folder = folders[0]
    mismatched, doubled, files, vectors = [], [], 0, 0
    for (kind, user), ids in wanted.items():
        path = folder / f"{kind}-{user}.faiss"
        found = faiss_ids(path) if path.exists() else []
        files += path.exists()
        vectors += len(found)
        if len(found) != len(set(found)):
            doubled.append((kind, user))
        if set(found) != ids:
            mismatched.append((kind, user, len(found), len(ids)))
    stray = [
        p.name
        for p in folder.iterdir()
        if p.suffix == ".faiss" and int(p.stem.split("-")[1]) not in users
    ]
    return [
        Check(
            f"{phase}: FAISS == SQLite",
            not mismatched and not stray,
            f"{files} index files, {vectors} vectors, {len(users)} people; "
            f"{len(mismatched)} differ {mismatched[:5]}, stray files {stray[:5]}",
        ),
        Check(
            f"{phase}: no id twice in FAISS", not doubled, f"{len(doubled)} indexes {doubled[:5]}"
        ),
    ]


# -- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--photos", type=int, default=1000, help="photos in phase 1 (no kills)")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 cycles in phase 2")
    parser.add_argument(
        "--kill-photos",
        type=int,
        default=500,
        help="photos in phase 2, spread over the kill cycles",
    )
    model_group = parser.add_mutually_exclusive_group()
    model_group.add_argument("--model", type=Path, help="a CLIP directory (default: tiny random)")
    model_group.add_argument(
        "--vit-b32",
        action="store_true",
        help="a ViT-B/32-sized random CLIP instead of the tiny one",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per phase")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    quiet_connection_resets()
    started = time.monotonic()
    print(f"cores {len(os.sched_getaffinity(0))}, load {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tastebot-soak-") as tmp_name:
        tmp = Path(tmp_name)
        env = {
            "RETRAIN_CHECK_MINUTES": "0.5",  # retrains run during the load too
            "RETRAIN_MIN_NEW_VOTES": "5",
        }
        if args.model:
            model, model_name = args.model, f"given ({args.model})"
        else:
            from testing.tiny_clip import build_clip, build_tiny_clip, vit_b32_config

            if args.vit_b32:
                model, model_name = build_clip(tmp / "clip", vit_b32_config()), "random ViT-B/32"
            else:
                model, model_name = build_tiny_clip(tmp / "clip"), "tiny random CLIP"
            env["DUPLICATE_THRESHOLD"] = "0.9995"  # random CLIPs put all pictures close together
        print(f"model: {model_name}", flush=True)
        data = tmp / "data"
        api = FakeBotAPI()
        checks: list[Check] = []
        logs: list[BotProcess] = []
        with api.serve() as url:
            load = Load(api, args.people, rng)

            # Phase 1 ------------------------------------------------------------------
            print(f"phase 1: {args.people} people, {args.photos} photos, no kills", flush=True)
            bot = BotProcess(api, url, model, data, env, tmp / "bot-0.log")
            logs.append(bot)
            print(f"  bot ready in {bot.start_seconds:.1f} s, RSS {bot.rss()[0]} MiB", flush=True)
            rss: dict[str, tuple[int, str]] = {"start": (bot.rss()[0], load_average())}
            samples: list[tuple[float, int]] = []
            marks = {"after warm-up": args.photos // 5, "middle": args.photos // 2}
            load.budget = args.photos
            phase_start = time.monotonic()
            last_sample = 0.0
            deadline = phase_start + args.timeout
            while load.busy():
                if time.monotonic() > deadline:
                    raise TimeoutError(load.describe())
                load.step()
                now = time.monotonic()
                if now - last_sample >= 1.0:
                    last_sample = now
                    samples.append((now - phase_start, bot.rss()[0]))
                for name, at in list(marks.items()):
                    if load.replied() >= at:
                        rss[name] = (bot.rss()[0], load_average())
                        print(
                            f"  {load.replied()} replies: RSS {rss[name][0]} MiB "
                            f"(load {rss[name][1]})",
                            flush=True,
                        )
                        del marks[name]
                with api._cond:
                    api._cond.wait(0.02)
            phase1_seconds = time.monotonic() - phase_start
            rss["end"] = (bot.rss()[0], load_average())
            peak = bot.rss()[1]
            f1 = Figures(**vars(load.figures))
            f1.error_replies = list(load.figures.error_replies)
            f1.callback_errors = list(load.figures.callback_errors)
            photo_latency = [p.replied - p.sent for p in load.photos.values() if p.replies]
            tap_latency = list(load.tap_latency)
            print(
                f"  done in {phase1_seconds:.0f} s: {f1.replies} replies, {f1.acks} taps "
                f"answered; RSS {rss['end'][0]} MiB, peak {peak} MiB (load {load_average()})",
                flush=True,
            )
            checks += check_votes(load, sqlite_query(data / "tastebot.sqlite3"), "phase 1")
            exit_code = bot.terminate()
            checks.append(Check("phase 1: SIGTERM exit 0", exit_code == 0, f"exit {exit_code}"))
            checks += check_faiss(data, sqlite_query(data / "tastebot.sqlite3"), "phase 1")
            warm, end = rss["after warm-up"][0], rss["end"][0]
            growth = end - warm
            allowed = max(64, warm // 10)
            checks.append(
                Check(
                    "phase 1: RSS flat after warm-up",
                    growth <= allowed,
                    f"{warm} → {end} MiB ({growth:+d}; allowed +{allowed})",
                )
            )
            errors1 = f1.error_replies + f1.callback_errors
            checks.append(
                Check("phase 1: no error replies", not errors1, f"{len(errors1)} {errors1[:3]}")
            )
            checks.append(
                Check(
                    "phase 1: every photo answered once",
                    f1.replies == f1.photos_sent and f1.answered_twice == 0,
                    f"{f1.photos_sent} sent, {f1.replies} answered, "
                    f"{f1.answered_twice} answered twice",
                )
            )

            # Phase 2 ------------------------------------------------------------------
            print(
                f"phase 2: {args.kills} × kill -9 during the load, {args.kill_photos} photos",
                flush=True,
            )
            phase_start = time.monotonic()
            new_photos = [args.kill_photos // max(1, args.kills)] * args.kills or [0]
            kills: list[dict[str, Any]] = []
            restarts: list[float] = []
            bot = BotProcess(api, url, model, data, env, tmp / "bot-1.log")
            logs.append(bot)
            restarts.append(bot.start_seconds)
            for cycle in range(args.kills):
                # Each cycle brings new photos; the kill comes after 20-80 % of them were
                # answered, with photos and taps in flight.
                load.budget += new_photos[cycle]
                base = load.replied()
                target = base + max(1, round(rng.uniform(0.2, 0.8) * new_photos[cycle]))
                load.run_until(
                    lambda t=target: load.replied() >= t or not load.busy(), args.timeout
                )
                time.sleep(rng.uniform(0.0, 0.5))  # anywhere, not just after a reply
                load.step()
                waiting = sum(len(v) for v in load.in_flight.values())
                spinning = sum(len(t.outstanding) for t in load.targets.values())
                bot.kill()
                counts = load.after_kill()
                kills.append(
                    {
                        "replies before": load.replied() - base,
                        "photos in flight": waiting,
                        "taps in flight": spinning,
                        **counts,
                    }
                )
                print(
                    f"  kill {cycle + 1}: {load.replied() - base} replies since start, in flight "
                    f"{waiting} photos / {spinning} taps → {counts}",
                    flush=True,
                )
                bot = BotProcess(api, url, model, data, env, tmp / f"bot-{cycle + 2}.log")
                logs.append(bot)
                restarts.append(bot.start_seconds)
            load.budget += args.kill_photos - sum(new_photos)  # what did not divide evenly
            try:
                load.run_until(lambda: not load.busy(), args.timeout)
            except TimeoutError as error:  # reported below: what was never answered
                checks.append(Check("phase 2: the load finished", False, str(error)))
            phase2_seconds = time.monotonic() - phase_start
            f2 = load.figures
            checks += check_votes(load, sqlite_query(data / "tastebot.sqlite3"), "phase 2")
            exit_code = bot.terminate()
            checks.append(Check("phase 2: SIGTERM exit 0", exit_code == 0, f"exit {exit_code}"))
            checks += check_faiss(data, sqlite_query(data / "tastebot.sqlite3"), "phase 2")
            errors2 = (
                f2.error_replies[len(f1.error_replies) :]
                + f2.callback_errors[len(f1.callback_errors) :]
            )
            checks.append(
                Check("phase 2: no error replies", not errors2, f"{len(errors2)} {errors2[:3]}")
            )
            unanswered = [p for p in load.photos.values() if not p.replies]
            checks.append(
                Check("phase 2: every photo answered", not unanswered, f"{len(unanswered)} not")
            )
            photos_never, taps_never = load.never_answered()
            checks.append(
                Check(
                    "phase 2: confirmed by a killed bot, answered after its restart",
                    photos_never == 0 and taps_never == 0,
                    f"{f2.photos_inboxed} photos / {f2.taps_inboxed} taps confirmed by a killed "
                    f"bot; never answered: {photos_never} photos / {taps_never} taps",
                )
            )
        api.close()
        log_errors = [entry for b in logs for entry in b.log_errors()]
        kept = None
        if log_errors or any(not c.ok for c in checks):  # keep the evidence
            kept = Path(tempfile.mkdtemp(prefix="tastebot-soak-logs-"))
            for b in logs:
                shutil.copy(b.log_path, kept / b.log_path.name)
        checks.append(
            Check(
                "both phases: no ERROR in the bot's logs",
                not log_errors,
                f"{len(log_errors)} {[e.splitlines()[0][:120] for e in log_errors[:3]]}",
            )
        )

    total = time.monotonic() - started
    print()
    print(
        f"model {model_name}; {args.people} people; {len(os.sched_getaffinity(0))} cores; "
        f"whole run {total:.0f} s"
    )
    print()
    print("| phase 1 (no kills) | |")
    print("|---|---|")
    print(
        f"| photos sent / answered / answered twice | {f1.photos_sent} / {f1.replies} / "
        f"{f1.answered_twice} |"
    )
    print(f"| throughput | {f1.replies / phase1_seconds:.1f} photos/s, {phase1_seconds:.0f} s |")
    print(
        f"| taps (duplicates / changes of mind) / answered | {f1.taps} ({f1.duplicate_taps} / "
        f"{f1.vote_changes_tapped}) / {f1.acks} |"
    )
    print(
        f"| photo → reply, median / p95 / max | {percentile(photo_latency, 0.5):.2f} / "
        f"{percentile(photo_latency, 0.95):.2f} / {max(photo_latency):.2f} s |"
    )
    print(
        f"| tap → answer, median / p95 / max | {percentile(tap_latency, 0.5):.2f} / "
        f"{percentile(tap_latency, 0.95):.2f} / {max(tap_latency):.2f} s |"
    )
    print(f"| error replies | {len(f1.error_replies) + len(f1.callback_errors)} |")
    print(f"| 'rated before' replies (near-duplicates) | {f1.rated_before} |")
    print(f"| retrain notifications | {f1.notifications} |")
    for name in ("start", "after warm-up", "middle", "end"):
        print(f"| RSS {name} (load average) | {rss[name][0]} MiB ({rss[name][1]}) |")
    print(f"| RSS peak (VmHWM) | {peak} MiB |")
    print()
    print("| phase 2 (kill -9) | |")
    print("|---|---|")
    print(
        f"| kills / restarts (s to ready, median) | {len(kills)} / "
        f"{sorted(restarts)[len(restarts) // 2]:.1f} |"
    )
    print(
        f"| photos sent / answered | {f2.photos_sent - f1.photos_sent} / "
        f"{f2.replies - f1.replies} |"
    )
    print(
        f"| photos answered twice (reply sent, kill before it was recorded) | "
        f"{f2.answered_twice - f1.answered_twice} |"
    )
    print(f"| taps / answered | {f2.taps - f1.taps} / {f2.acks - f1.acks} |")
    print(
        f"| in flight at the kills: photos / taps | "
        f"{sum(k['photos in flight'] for k in kills)} / {sum(k['taps in flight'] for k in kills)} |"
    )
    print(
        f"| … delivered again by Telegram: photos / taps | {f2.photos_redelivered} / "
        f"{f2.taps_redelivered} |"
    )
    photos_never, taps_never = load.never_answered()
    print(
        f"| … confirmed by the dead bot, answered from the inbox after the restart | photos "
        f"{f2.photos_inboxed - photos_never} of {f2.photos_inboxed} / taps "
        f"{f2.taps_inboxed - taps_never} of {f2.taps_inboxed} |"
    )
    print(
        f"| … confirmed by the dead bot, never answered | photos {photos_never} / "
        f"taps {taps_never} |"
    )
    print(
        f"| late answers refused (already answered before the kill) | {f2.late_answers_refused} |"
    )
    print(f"| time | {phase2_seconds:.0f} s |")
    print()
    print(f"ERROR records in the bot logs: {len(log_errors)}")
    for entry in log_errors[:2]:
        lines = entry.splitlines()
        for line in [*lines[:25], "    …", *lines[-25:]] if len(lines) > 50 else lines:
            print("   ", line)
    if kept is not None:
        print(f"the bot's logs are kept in {kept}")
    print()
    failed = [c for c in checks if not c.ok]
    for c in checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    print()
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed; load {load_average()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
