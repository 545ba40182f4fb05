from __future__ import annotations

from bot.admin_text import retrain_text
from domain import RetrainOutcome, User


def _outcome(i: int) -> RetrainOutcome:
    user = User(i, "telegram", str(100_000 + i))
    if i % 5 == 0:
        return RetrainOutcome(user, None, False, None, None, 3, "3 votes, fewer than 6")
    promoted = i % 2 == 0
    reason = "holdout AUC 0.812 ≥ active 0.800" if promoted else "holdout AUC 0.700 < active 0.800"
    return RetrainOutcome(user, 7, promoted, 0.8, 0.8, 120, reason)


def test_a_round_over_hundreds_of_people_fits_in_one_message() -> None:
    outcomes = [_outcome(i) for i in range(1, 301)]
    text = retrain_text(outcomes)
    lines = text.split("\n")
    assert len(text) <= 4096
    # 300 people: 60 not trained (every fifth), 120 promoted (even, not a multiple of 5)
    assert (
        lines[0] == "Retrained 240 of 300 people: 120 promoted, 120 not promoted, 60 not trained."
    )
    listed = lines[1:-1]
    assert lines[-1] == f"… and {300 - len(listed)} more" and 30 < len(listed) < 300
    assert listed[0] == "user 100001: v7 not promoted, AUC 0.800 on held-out votes — " + (
        "holdout AUC 0.700 < active 0.800"
    )
    assert retrain_text(outcomes, limit=2000).count("\n") < len(lines) - 1


def test_one_or_a_few_people_are_listed_in_full() -> None:
    one = retrain_text([_outcome(2)])
    assert (
        one
        == "user 100002: v7 promoted, AUC 0.800 on held-out votes — holdout AUC 0.812 ≥ active 0.800"
    )
    few = retrain_text([_outcome(i) for i in range(1, 6)]).split("\n")
    assert few[0] == "Retrained 4 of 5 people: 2 promoted, 2 not promoted, 1 not trained."
    assert len(few) == 6 and few[-1] == "user 100005: not trained — 3 votes, fewer than 6"


def test_retrain_text_never_goes_over_the_limit_with_the_more_line() -> None:
    from bot.render import units as _units

    for people in (28, 40, 90):
        for reason in range(150, 260):
            outcomes = [
                RetrainOutcome(User(i, "telegram", str(1000 + i)), None, False, None, None, 0, "x" * reason)
                for i in range(people)
            ]  # fmt: skip
            assert _units(retrain_text(outcomes)) <= 4096, (people, reason)


def test_callback_data_with_non_ascii_digits_is_not_ours() -> None:
    from bot.telegram_adapter.callback_data import decode_submission_action, decode_vote

    assert decode_vote("v:²:l") is None and decode_submission_action("s:١٢", "s") is None
    assert decode_vote("v:12:l") is not None and decode_submission_action("s:12", "s") == 12


def test_agreement_is_worded_for_one_vote_and_for_many() -> None:
    from bot.render import promotion_text
    from domain import RetrainOutcome, User

    def ready(agreed: int, checked: int) -> str:
        outcome = RetrainOutcome(
            User(1, "t", "1"), 1, True, 1.0, None, 9, "", False, agreed, checked
        )
        return promotion_text(outcome)

    assert ready(1, 1) == (
        "Your taste model is ready: it agreed with the one vote I kept aside to check it."
    )
    assert "got wrong the one vote" in ready(0, 1)
    assert ready(3, 4).endswith("it agreed with 3 of the 4 votes I kept aside to check it.")
    assert "I'll tell you how well it knows you" in ready(0, 0)
