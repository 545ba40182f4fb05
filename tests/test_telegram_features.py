"""Everyday features through the real PTB Application and a fake Bot API: albums,
duplicates, show similar, undo, forget, export, charts, limits, groups, admin commands."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
from PIL import Image

from bot.settings import Settings
from bot.telegram_adapter.callback_data import encode_submission_action
from domain import NewModel, Vote
from learner.encoder import ClipImageEncoder
from learner.head import train_head
from tests.conftest import image_bytes
from tests.test_telegram import ADMIN, ALICE, Harness, _submission_id, bot, running_bot

__all__ = ["bot"]  # the fixture, re-used

BOB = 2
GROUP = -100


async def _vote_many(
    bot: Harness, user: int, seeds: range, chat_id: int | None = None
) -> list[dict]:
    replies = []
    for seed in seeds:
        reply = await bot.send_photo(user, image_bytes(seed), chat_id=chat_id)
        await bot.vote(user, reply, Vote.LIKE if seed % 2 == 0 else Vote.DISLIKE)
        replies.append(reply)
    return replies


async def test_albums_interleaved_get_one_ranked_reply_each(bot: Harness) -> None:
    alice_album = [bot.api.send_photo(ALICE, image_bytes(s), media_group_id="a1") for s in (1, 2)]
    bob_album = [bot.api.send_photo(BOB, image_bytes(s), media_group_id="b1") for s in (3, 4)]
    alice_album.append(bot.api.send_photo(ALICE, image_bytes(5), media_group_id="a1"))
    bob_album.append(bot.api.send_photo(BOB, image_bytes(6), media_group_id="b1"))
    for user, album in ((ALICE, alice_album), (BOB, bob_album)):
        reply = await bot.reply_to(album[0]["message"])
        assert reply["text"].startswith("Your album, best first (3 images):")
        scores = [
            int(line.split(": ")[1].split("%")[0]) for line in reply["text"].splitlines()[1:4]
        ]
        assert scores == sorted(scores, reverse=True)
        rows = reply["reply_markup"]["inline_keyboard"]
        assert [b["text"] for b in rows[0]] == ["1. 👎", "1. 👍", "1. ⭐"] and len(rows) == 3
        await asyncio.sleep(0.2)
        assert len(bot.api.sent_messages(chat_id=user)) == 1  # one reply per album
    # A vote on the second row ticks only that row.
    reply = bot.api.sent_messages(chat_id=ALICE)[0]
    second = reply["reply_markup"]["inline_keyboard"][1]
    bot.api.press_button(ALICE, reply, second[1]["callback_data"])
    await bot.api.wait_for_call("editMessageReplyMarkup")
    rows = bot.api.message(ALICE, reply["message_id"])["reply_markup"]["inline_keyboard"]
    assert [b["text"] for b in rows[1]] == ["2. 👎", "✓ 2. 👍", "2. ⭐"]
    assert all(not b["text"].startswith("✓") for row in (rows[0], rows[2]) for b in row)


async def test_same_image_again_says_rated_before(bot: Harness) -> None:
    first = await bot.send_photo(ALICE, image_bytes(7))
    await bot.vote(ALICE, first, Vote.SUPER_LIKE)
    again = await bot.send_photo(ALICE, image_bytes(7))
    # The reply shows the picture it matched, with the score as its caption.
    assert "You rated this before: ⭐ Super like (this picture)" in again["caption"]
    shown = bot.api.calls_to("sendPhoto")[-1].files["photo"].data
    assert shown == image_bytes(7)
    # The buttons act on the earlier vote, with it ticked.
    assert _submission_id(again) == _submission_id(first)
    assert again["reply_markup"]["inline_keyboard"][0][2]["text"] == "✓ ⭐ Super like"
    # A re-encoded copy (different bytes, near-identical embedding) is recognised too.
    out = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(7))).save(out, "PNG")
    copy = await bot.send_photo(ALICE, out.getvalue())
    assert "You rated this before" in copy["caption"]
    assert bot.api.calls_to("sendPhoto")[-1].files["photo"].data == image_bytes(7)
    # Bob never rated it.
    assert "rated before" not in (await bot.send_photo(BOB, image_bytes(7)))["text"]


async def test_show_similar_sends_only_the_tappers_own_likes(bot: Harness) -> None:
    await _vote_many(bot, ALICE, range(1, 7))  # Alice likes 2, 4, 6
    bob_reply = await bot.send_photo(BOB, image_bytes(2))
    answer = await bot.tap(BOB, bob_reply, encode_submission_action("s", _submission_id(bob_reply)))
    assert "None of the images you liked" in answer["text"]
    assert bot.api.calls_to("sendPhoto") == []  # nothing of Alice's reaches Bob

    alice_reply = await bot.send_photo(ALICE, image_bytes(40))
    bot.api.press_button(
        ALICE, alice_reply, encode_submission_action("s", _submission_id(alice_reply))
    )
    photos = await bot.api.wait_for_call("sendPhoto", count=3)
    liked = {image_bytes(s) for s in (2, 4, 6)}
    assert all(c.params["chat_id"] == ALICE for c in photos)
    assert {c.files["photo"].data for c in photos} == liked


async def test_undo_removes_the_last_vote(bot: Harness) -> None:
    reply = await bot.send_photo(ALICE, image_bytes(1))
    await bot.vote(ALICE, reply, Vote.LIKE)
    assert await bot.command(ALICE, "/undo") == (
        "Removed your last vote (👍 Like). That image is unrated again."
    )
    rows = await bot.services.store.db.fetch_all("SELECT COUNT(*) FROM feedback")
    assert rows[0][0] == 0
    buttons = bot.api.message(ALICE, reply["message_id"])["reply_markup"]["inline_keyboard"][0]
    assert not any(b["text"].startswith("✓") for b in buttons)
    assert bot.services.indexes.liked.count(1) == 0
    assert await bot.command(ALICE, "/undo") == "You have no vote to undo."


async def test_undo_leaves_album_rows_and_group_buttons_as_they_are(bot: Harness) -> None:
    album = [bot.api.send_photo(ALICE, image_bytes(s), media_group_id="a1") for s in (1, 2, 3)]
    reply = await bot.reply_to(album[0]["message"])
    rows = reply["reply_markup"]["inline_keyboard"]
    assert len(rows) == 3  # one row of vote buttons per image
    await bot.tap(ALICE, reply, rows[1][1]["callback_data"])
    group_reply = await bot.send_photo(BOB, image_bytes(30), chat_id=GROUP)
    group_rows = group_reply["reply_markup"]["inline_keyboard"]
    await bot.tap(ALICE, group_reply, group_rows[0][1]["callback_data"])
    edits = len(bot.api.calls_to("editMessageReplyMarkup"))

    assert (await bot.command(ALICE, "/undo")).startswith("Removed your last vote")  # group's
    assert (await bot.command(ALICE, "/undo")).startswith("Removed your last vote")  # album's
    assert await bot.command(ALICE, "/undo") == "You have no vote to undo."
    # Neither the group's buttons (everyone's) nor the album's rows were rewritten.
    assert len(bot.api.calls_to("editMessageReplyMarkup")) == edits
    assert bot.api.message(GROUP, group_reply["message_id"])["reply_markup"]["inline_keyboard"] == (
        group_rows
    )
    assert len(bot.api.message(ALICE, reply["message_id"])["reply_markup"]["inline_keyboard"]) == 3


async def test_forget_deletes_everything_of_that_person_only(bot: Harness) -> None:
    await _vote_many(bot, ALICE, range(1, 13))
    await _vote_many(bot, BOB, range(11, 15))  # Bob also sent images 11 and 12
    results = await bot.retrain("/retrain all")
    assert "v1 promoted" in results and "not trained — needs at least 6 votes" in results
    progress = [c.params["text"] for c in bot.api.calls_to("editMessageText")]
    assert progress[0] == "Retraining… 1 of 2 people done."  # one message, edited
    # Alice hears about her new model once; Bob, with too few votes, hears nothing.
    ready = [m for m in bot.api.sent_messages(chat_id=ALICE) if m["text"].startswith("Your taste")]
    assert [m["text"][:25] for m in ready] == ["Your taste model is ready"]
    assert not [m for m in bot.api.sent_messages(chat_id=BOB) if "Your taste" in m["text"]]
    data_dir = bot.services.data_dir.root
    alice = await bot.services.store.people.find_user("telegram", str(ALICE))
    assert alice is not None
    assert list((data_dir / "models" / "heads" / str(alice.id)).glob("*.npz"))
    bot.services.indexes.liked.flush()
    assert (bot.services.indexes.liked.directory / f"liked-{alice.id}.faiss").exists()

    prompt = await bot.command(ALICE, "/forget")
    assert "cannot be undone" in prompt
    message = bot.api.sent_messages(chat_id=ALICE)[-1]
    bot.api.press_button(ALICE, message, "f:y")
    done = await bot.api.wait_for(
        lambda: "Deleted:" in bot.api.message(ALICE, message["message_id"]).get("text", "")
    )
    assert done
    text = bot.api.message(ALICE, message["message_id"])["text"]
    assert text.startswith("Deleted: 12 images you sent, 12 votes, 1 model,")

    db = bot.services.store.db
    for table, column in (
        ("submissions", "user_id"),
        ("feedback", "user_id"),
        ("model_versions", "owner_user_id"),
        ("training_runs", "user_id"),
    ):
        rows = await db.fetch_all(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (alice.id,))
        assert rows[0][0] == 0, table
    assert await bot.services.store.people.find_user("telegram", str(ALICE)) is None
    # Images only Alice sent are gone with their files; the two Bob also sent stay.
    images = await db.fetch_all("SELECT sha256, file_path FROM images")
    assert len(images) == 4
    assert sorted(p.name for p in (data_dir / "images").rglob("*.*")) == sorted(
        r[1].split("/")[-1] for r in images
    )
    assert not (data_dir / "models" / "heads" / str(alice.id)).exists() or not list(
        (data_dir / "models" / "heads" / str(alice.id)).iterdir()
    )
    assert not (bot.services.indexes.liked.directory / f"liked-{alice.id}.faiss").exists()
    assert bot.services.indexes.liked.count(alice.id) == 0
    bob = await bot.services.store.people.find_user("telegram", str(BOB))
    assert bob is not None and (await bot.services.store.people.user_counts(bob.id)).votes == 4


async def test_forget_can_be_cancelled(bot: Harness) -> None:
    await _vote_many(bot, ALICE, range(1, 3))
    await bot.command(ALICE, "/forget")
    message = bot.api.sent_messages(chat_id=ALICE)[-1]
    bot.api.press_button(ALICE, message, "f:n")
    await bot.api.wait_for(
        lambda: bot.api.message(ALICE, message["message_id"]).get("text") == "Nothing was deleted."
    )
    rows = await bot.services.store.db.fetch_all("SELECT COUNT(*) FROM feedback")
    assert rows[0][0] == 2


async def test_export_is_the_persons_own_data(bot: Harness) -> None:
    await _vote_many(bot, ALICE, range(1, 4))
    await bot.send_photo(ALICE, image_bytes(9), caption="unrated")
    await _vote_many(bot, BOB, range(20, 22))
    bot.api.send_text(ALICE, "/export")
    [call] = await bot.api.wait_for_call("sendDocument")
    assert call.params["chat_id"] == ALICE
    upload = call.files["document"]
    assert upload.filename == "tastebot-export.json"
    rows = json.loads(upload.data)["submissions"]
    assert [r["vote"] for r in rows] == ["dislike", "like", "dislike", None]
    assert rows[3]["caption"] == "unrated"
    assert {r["sha256"] for r in rows} == {
        __import__("hashlib").sha256(image_bytes(s)).hexdigest() for s in (1, 2, 3, 9)
    }
    assert set(rows[0]) == {
        "sha256",
        "caption",
        "vote",
        "score",
        "model_version",
        "submitted_at",
        "voted_at",
    }


async def test_stats_chart_is_a_png_with_numbers_in_caption(bot: Harness) -> None:
    await _vote_many(bot, ALICE, range(1, 13))
    await bot.retrain()
    bot.api.send_text(ALICE, "/stats")
    [call] = await bot.api.wait_for_call("sendPhoto")
    png = call.files["photo"].data
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.size[0] > 400
    caption = call.params["caption"]
    assert (
        "Images you sent: 12 · 👍 6 · ⭐ 0 · 👎 6" in caption
        and "Got you right, by version: v1" in caption
    )


async def test_start_says_how_many_votes_the_first_model_needs(bot: Harness) -> None:
    assert "Your first model needs 6 votes" in await bot.command(ALICE, "/start")
    await _vote_many(bot, ALICE, range(1, 3))
    assert "Your first model needs 4 more votes" in await bot.command(ALICE, "/start")


async def test_rate_limit_is_polite(settings: Settings, encoder: ClipImageEncoder) -> None:
    async with running_bot(settings.model_copy(update={"images_per_minute": 2}), encoder) as bot:
        texts = [(await bot.send_photo(ALICE, image_bytes(s)))["text"] for s in range(3)]
        assert texts[0].startswith("Your score") and texts[1].startswith("Your score")
        assert texts[2].startswith("You're sending images faster than I can learn")
        assert texts[2] == (await bot.send_photo(ALICE, image_bytes(9)))["text"]
        assert (await bot.send_photo(BOB, image_bytes(4)))["text"].startswith("Your score")


async def test_group_chat_keeps_each_members_data_private(bot: Harness) -> None:
    # Alice trains a model in private; then Alice and Bob meet in a group.
    await _vote_many(bot, ALICE, range(1, 13))
    await bot.retrain()
    reply = await bot.send_photo(BOB, image_bytes(30), chat_id=GROUP)
    assert "%" not in reply["text"]  # Bob's score is not posted to the group
    answer = await bot.tap(
        ALICE, reply, reply["reply_markup"]["inline_keyboard"][0][1]["callback_data"]
    )
    assert answer["text"] == "Saved: 👍 Like (only you see this)"
    edits = bot.api.calls_to("editMessageReplyMarkup")
    assert [c for c in edits if c.params["chat_id"] == GROUP] == []  # no tick the group sees
    alert = await bot.tap(ALICE, reply, encode_submission_action("m", _submission_id(reply)))
    assert (
        alert.get("show_alert") and "· model v1" in alert["text"]
    )  # Alice's own model scored it, only for her
    alice = await bot.services.store.people.find_user("telegram", str(ALICE))
    bob = await bot.services.store.people.find_user("telegram", str(BOB))
    assert alice is not None and bob is not None
    assert (await bot.services.store.people.user_counts(alice.id)).likes == 7  # her vote, her model
    assert (await bot.services.store.people.user_counts(bob.id)).votes == 0
    bot.api.send_text(BOB, "/stats", chat_id=GROUP)
    notice = await bot.api.wait_for(
        lambda: [
            m for m in bot.api.sent_messages(chat_id=GROUP) if "private chat" in m.get("text", "")
        ]
    )
    assert notice


async def test_admin_models_and_rollback(bot: Harness) -> None:
    replies = await _vote_many(bot, ALICE, range(1, 13))
    assert "v1 promoted" in await bot.retrain(f"/retrain {ALICE}")
    ready = [m for m in bot.api.sent_messages(chat_id=ALICE) if m["text"].startswith("Your taste")]
    assert [m["text"][:25] for m in ready] == ["Your taste model is ready"]  # told, as by a round
    for reply in replies[:6]:  # flip the first six votes: something new to learn
        await bot.vote(ALICE, reply, Vote.SUPER_LIKE)
    assert "v2" in await bot.retrain(f"/retrain {ALICE}")
    models = await bot.command(ADMIN, f"/models {ALICE}")
    assert models.startswith(f"Models of user {ALICE}:") and "v1 " in models and "v2 " in models
    assert await bot.command(ADMIN, f"/rollback {ALICE} v2") == f"User {ALICE} now uses model v2."
    assert await bot.command(ADMIN, f"/rollback {ALICE} 1") == f"User {ALICE} now uses model v1."
    usage = "Usage: /rollback <user id or @username> <version>"
    for version in ("²", "v²", "v", "-1", "1.0"):  # "²" used to crash the handler (int("²"))
        assert await bot.command(ADMIN, f"/rollback {ALICE} {version}") == usage, version
    active = await bot.services.store.models.active_model(1)
    assert active is not None and active.version == 1
    assert "· model v1" in (await bot.send_photo(ALICE, image_bytes(50)))["text"]
    assert await bot.command(ADMIN, f"/rollback {ALICE} 9") == f"User {ALICE} has no model v9."
    assert await bot.command(ALICE, "/models 1") == "Only the bot's admins can use /models."
    assert await bot.command(ALICE, "/rollback 1 1") == "Only the bot's admins can use /rollback."
    everyone = await bot.command(ADMIN, "/stats all")
    assert everyone.startswith("All users: ") and f"telegram {ALICE}: 12 votes · v1" in everyone
    assert np.isfinite(active.metrics.get("train_seconds") or 0.0)


async def test_hundreds_of_versions_fit_in_models_and_stats_messages(bot: Harness) -> None:
    # A person retrained every few votes has hundreds of versions; Telegram refuses a text
    # over 4096 characters and a caption over 1024 (the fake does too).
    await _vote_many(bot, ALICE, range(1, 9))
    user = await bot.services.store.people.get_or_create_user("telegram", str(ALICE), "Alice")
    x = (
        np.random.default_rng(0)
        .normal(size=(8, bot.services.encoder.embedder.dim))
        .astype(np.float32)
    )
    head = train_head(x / np.linalg.norm(x, axis=1, keepdims=True), np.array([0, 1] * 4))
    for version in range(1, 301):
        if version == 2 or version > 290:  # the others' files are gone (HEAD_FILES_KEPT)
            path = bot.services.data_dir.path(f"models/heads/{user.id}/v{version}.npz")
            path.parent.mkdir(parents=True, exist_ok=True)
            head.save(path)  # a rollback reads it
        await bot.services.store.models.add_model_version(
            NewModel(
                user.id,
                "head",
                version,
                f"models/heads/{user.id}/v{version}.npz",
                bot.services.encoder.embedder.version,
                8,
                2,
                {"auc": 0.5 + version / 1000, "ece": 0.05},
                trained_through=0,
            ),
            promote=True,
        )
    assert await bot.services.store.models.activate_model_version(user.id, 2)  # rolled far back

    models = await bot.command(ADMIN, f"/models {ALICE}")
    lines = models.split("\n")
    assert lines[0] == f"Models of user {ALICE}:" and len(models) <= 4096
    older = int(lines[1].split()[1])
    assert lines[1] == f"… {older} older versions not shown" and 200 < older < 300
    assert lines[2].startswith("v2 active:")  # the active one is always listed
    assert lines[-1].startswith("v300 retired:")
    assert lines[-11].startswith("v290 retired (file removed):")
    assert len(lines) - 3 == 300 - older - 1  # the newest that fit, none twice
    assert await bot.command(ADMIN, f"/rollback {ALICE} 5") == (
        f"Model v5 of user {ALICE} can't be restored: only the files of the active model and "
        "the 20 newest others are kept (HEAD_FILES_KEPT)."
    )
    assert (
        await bot.command(ADMIN, f"/rollback {ALICE} 299") == f"User {ALICE} now uses model v299."
    )

    caption = await bot.command(ALICE, "/stats")
    assert len(caption) <= 1024
    assert caption.endswith("v299 80% → v300 80%") and "Got you right, by version: … → " in caption


async def test_retrain_full_fine_tunes_with_progress_in_chat(
    settings: Settings, encoder: ClipImageEncoder
) -> None:
    from tests.test_backbone import coloured

    quick = settings.model_copy(
        update={
            "finetune_min_votes": 10,
            "finetune_head_epochs": 1,
            "finetune_encoder_epochs": 1,
            "finetune_unfreeze_blocks": 1,
            "duplicate_threshold": 1.0,  # these pictures are near-identical to a tiny CLIP
        }
    )
    async with running_bot(quick, encoder) as bot:
        assert (
            await bot.command(ALICE, "/retrain full") == "Only the bot's admins can use /retrain."
        )
        for seed in range(16):
            reply = await bot.send_photo(ALICE, coloured(seed, red=seed % 2 == 0))
            await bot.vote(ALICE, reply, Vote.LIKE if seed % 2 == 0 else Vote.DISLIKE)
        await bot.retrain()  # a head on the current encoder first
        final = await bot.retrain("/retrain full")
        assert final.startswith("CLIP fine-tune v1 (") and "promoted" in final, final
        edits = [c.params["text"] for c in bot.api.calls_to("editMessageText")]
        assert any(e.startswith("Fine-tuning CLIP v1 on ") for e in edits)
        assert any(e.startswith("Re-embedding images: 16/16") for e in edits)
        runs = await bot.services.store.db.fetch_all(
            "SELECT outcome FROM training_runs WHERE kind = 'backbone'"
        )
        assert runs[0][0] in ("promoted", "rejected")
        assert await bot.command(ADMIN, "/retrain cancel") == "No fine-tune is running."


async def test_admin_commands_accept_a_username_the_bot_has_seen(bot: Harness) -> None:
    bot.api.add_user(ALICE, "Alice", username="Alice_K")
    for seed in range(1, 13):
        reply = await bot.send_photo(ALICE, image_bytes(seed))
        await bot.vote(ALICE, reply, Vote.LIKE if seed % 2 else Vote.DISLIKE)
    assert "v1 promoted" in await bot.retrain("/retrain @alice_k")
    listing = await bot.command(ADMIN, "/models @ALICE_K")
    assert "v1" in listing and "I don't know" not in listing
    assert "I don't know user @nobody" in await bot.command(ADMIN, "/models @nobody")


async def test_a_first_day_speaks_plainly(settings: Settings, encoder: ClipImageEncoder) -> None:
    """Everything a new person reads on their first day: no AUC, holdout or ECE, no literal
    markdown, plurals right."""
    quick = settings.model_copy(update={"retrain_after_votes": True, "retrain_pause_seconds": 0.1})
    async with running_bot(quick, encoder) as bot:
        texts = [await bot.command(ALICE, "/start"), await bot.command(ALICE, "/help")]
        for seed in range(1, 10):
            reply = await bot.send_photo(ALICE, image_bytes(seed))
            texts.append(reply.get("text") or reply.get("caption") or "")
            texts.append(await bot.vote(ALICE, reply, Vote.LIKE if seed % 2 else Vote.DISLIKE))
        await bot.api.wait_for(
            lambda: any(
                m.get("text", "").startswith("Your taste model")
                for m in bot.api.sent_messages(chat_id=ALICE)
            ),
            timeout=30,
        )
        texts.append(await bot.command(ALICE, "/stats"))
        texts.append(await bot.command(ALICE, "/undo"))
        texts += [m.get("text") or m.get("caption") or "" for m in bot.api.sent_messages(ALICE)]
    for text in texts:
        for jargon in ("AUC", "holdout", "ECE", "*", " 1 votes", " 1 images", " 1 models"):
            assert jargon not in text, (jargon, text)
