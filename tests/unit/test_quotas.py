"""Which limits a key works under (pure)."""

from __future__ import annotations

import pytest

from gateway.quotas import UNLIMITED, Limits, limits_for, parse_key_limits

DEFAULTS = Limits(rate_per_s=10, burst=20, max_active=50)


def test_per_key_limits_parse_with_empty_fields_as_unlimited() -> None:
    assert parse_key_limits("a=5/10/3; b=//2 ;c=0.5") == {
        "a": Limits(5, 10, 3), "b": Limits(0, 0, 2), "c": Limits(0.5, 0, 0)}
    assert parse_key_limits("") == {}


@pytest.mark.parametrize("bad", ["a", "=1/2/3", "a=1/2/3/4", "a=x"])
def test_malformed_per_key_limits_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_key_limits(bad)


def test_admin_keys_are_exempt_others_get_their_own_or_the_defaults() -> None:
    per_key = {"special": Limits(1, 1, 1)}
    assert limits_for("boss", DEFAULTS, per_key, ("boss",)) == UNLIMITED
    assert limits_for("special", DEFAULTS, per_key, ("boss",)) == Limits(1, 1, 1)
    assert limits_for("anyone", DEFAULTS, per_key, ("boss",)) == DEFAULTS


def test_the_bucket_holds_at_least_one_second_of_requests() -> None:
    assert Limits(rate_per_s=2.5).bucket == 3
    assert Limits(rate_per_s=0.2).bucket == 1
    assert Limits(rate_per_s=5, burst=40).bucket == 40
