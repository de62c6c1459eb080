"""batchkit.alert_channels: which channels each tier goes to. The channels' message bodies and their
delivery, through batchkit.alerts and real receivers on loopback: tests/batchkit/test_alerts.py."""

from __future__ import annotations

from batchkit.alert_channels import DIGEST_TIERS, TIER_CHANNELS
from batchkit.taxonomy import Tag


def test_the_routing_table_covers_every_tier_once() -> None:
    tiers = {tag.value for tag in Tag if tag.value.startswith("tier:")}
    assert set(TIER_CHANNELS) == tiers
    assert TIER_CHANNELS["tier:1"] == ("pager", "slack")
    assert TIER_CHANNELS["tier:2"] == ("slack",)
    assert TIER_CHANNELS["tier:3"] == ("email",)
    assert frozenset({"tier:3"}) == DIGEST_TIERS, "tier:3 email goes out as the hourly digest"
