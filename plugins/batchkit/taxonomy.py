"""The only tags a DAG may carry, and the shape a DAG's tag set must have.

Tags are how people filter the UI and route alerts, so they are a closed vocabulary: a typo'd or ad-hoc
tag would silently drop a DAG out of every filter that should find it. Adding a tag means adding a
member here, in review.

Every DAG carries exactly one `kind:` (what the automation does), exactly one `tier:` (how urgent its
failures are; 1 = page someone) and at least one `domain:` (who owns the data it touches).

The tier picks where a DAG's alerts go: batchkit.alert_channels.TIER_CHANNELS (tier:1 pager webhook +
Slack, tier:2 Slack, tier:3 email). A new tier needs a row there too.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Tag(StrEnum):
    DOMAIN_SALES = "domain:sales"
    DOMAIN_CRM = "domain:crm"
    DOMAIN_FINANCE = "domain:finance"
    DOMAIN_PLATFORM = "domain:platform"
    KIND_SYNC = "kind:sync"
    KIND_REPORT = "kind:report"
    KIND_MAINTENANCE = "kind:maintenance"
    KIND_SMOKE = "kind:smoke"
    TIER_1 = "tier:1"
    TIER_2 = "tier:2"
    TIER_3 = "tier:3"


DOMAIN_PREFIX = "domain:"
KIND_PREFIX = "kind:"
TIER_PREFIX = "tier:"


def tag_problems(tags: Iterable[str]) -> list[str]:
    """Every way `tags` breaks the taxonomy, one sentence each (empty when the tags are valid)."""
    if isinstance(tags, str):
        # A bare string iterates as characters, which would report nonsense "unknown tags".
        return [f"tags must be a collection of Tag values, got the string {tags!r}"]
    given = sorted({str(tag) for tag in tags})
    allowed = {tag.value for tag in Tag}
    problems = []
    unknown = [tag for tag in given if tag not in allowed]
    if unknown:
        problems.append(
            f"unknown tags {unknown}: only batchkit.taxonomy.Tag values are allowed "
            f"({', '.join(sorted(allowed))})"
        )
    known = [tag for tag in given if tag in allowed]
    kinds = [tag for tag in known if tag.startswith(KIND_PREFIX)]
    tiers = [tag for tag in known if tag.startswith(TIER_PREFIX)]
    domains = [tag for tag in known if tag.startswith(DOMAIN_PREFIX)]
    if len(kinds) != 1:
        problems.append(f"needs exactly one '{KIND_PREFIX}' tag, has {len(kinds)} {kinds}")
    if len(tiers) != 1:
        problems.append(f"needs exactly one '{TIER_PREFIX}' tag, has {len(tiers)} {tiers}")
    if not domains:
        problems.append(f"needs at least one '{DOMAIN_PREFIX}' tag, has none")
    return problems


def validate_tags(tags: Iterable[str]) -> list[str]:
    """The tags as a sorted list of strings; ValueError naming every broken rule otherwise."""
    problems = tag_problems(tags)
    if problems:
        raise ValueError("invalid tags: " + "; ".join(problems))
    return sorted({str(tag) for tag in tags})
