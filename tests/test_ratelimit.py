from bot.ratelimit import SlidingWindowLimit


def test_sliding_window_per_key() -> None:
    now = [0.0]
    limit = SlidingWindowLimit(3, window_seconds=60, clock=lambda: now[0])
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limit.allow("b")  # other people are not affected
    now[0] = 59.9
    assert not limit.allow("a")
    now[0] = 60.0  # the first three fall out of the window together
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]
