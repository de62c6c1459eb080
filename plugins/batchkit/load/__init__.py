"""The load path into the warehouse: checked identifiers, COPY staging, merge (upsert / interval replace)."""

from batchkit.load.identifiers import checked_identifier
from batchkit.load.postgres import MergeCounts, MergeMode, Staging, TargetSpec

__all__ = ["MergeCounts", "MergeMode", "Staging", "TargetSpec", "checked_identifier"]
