from bot.ratelimit import SWEEP_EVERY, SlidingWindowLimit


def test_sliding_window_per_key() -> None:
    now = [0.0]
    limit = SlidingWindowLimit(3, window_seconds=60, clock=lambda: now[0])
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limit.allow("b")  # other people are not affected
    now[0] = 59.9
    assert not limit.allow("a")
    now[0] = 60.0  # the first three fall out of the window together
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]


def test_people_who_went_quiet_are_forgotten() -> None:
    now = [0.0]
    limit = SlidingWindowLimit(3, window_seconds=60, clock=lambda: now[0])
    for person in range(SWEEP_EVERY - 1):
        assert limit.allow(person)
    assert len(limit) == SWEEP_EVERY - 1
    now[0] = 61.0  # everyone's events are out of the window; the next call sweeps
    assert limit.allow("new")
    assert len(limit) == 1
    assert [limit.allow("new") for _ in range(3)] == [True, True, False]  # still limited
