from gateway.cache import remember


def test_a_full_cache_starts_again_and_never_exceeds_its_bound() -> None:
    cache: dict[str, int] = {}
    for n in range(10):
        assert remember(cache, f"device-{n}", n, 4) == n
        assert len(cache) <= 4
    # The last key is always kept; those before the last emptying are gone.
    assert cache == {"device-8": 8, "device-9": 9}
