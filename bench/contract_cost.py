"""Client CPU per million records of the sync's per-page work: decode, validate, COPY the rows.

    .venv/bin/python -m bench.contract_cost [--records 100000] [--repeats 7]

One process, the demo upstream's orders rendered in memory (tools.demo_upstream: the bytes the API
serves, in pages of 10,000), four steps timed with process CPU time, each the minimum over --repeats
alternating rounds (this machine's speed drifts by a third within seconds; the minimum is the least
disturbed round):

  decode     stdlib json.loads, as before, against msgspec.json.decode, what RestApiHook uses;
  validate   include.contracts.orders.Order against the same contract written with pydantic's
             defaults (AwareDatetime after a Python check that the input is a string, and
             Decimal with Field(max_digits, decimal_places, ge)), as it was before this was tuned;
  dump       the two contracts' rows written by binary COPY (set_types, as batchkit.load does)
             into an UNLOGGED table on $BENCH_PG_URL, the client's CPU only.

The point: bench/extract_load.py's ratio against a bare requests + json + COPY script is decided on
the client, whose CPU these steps are; this shows where it goes and what the tuning bought.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from operator import attrgetter
from typing import Annotated, Any, Self

import msgspec
import psycopg
from pydantic import AwareDatetime, BeforeValidator, Field, StringConstraints, model_validator

from bench.common import write_result
from include.contracts import RecordId, SourceRecord
from include.contracts.orders import TARGET, Order
from tools.demo_upstream import Volumes, select

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DAY = datetime(2024, 5, 1, tzinfo=UTC)
PAGE_SIZE = 10_000


def _string_input(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 timestamp string with a timezone")
    return value


class PlainOrder(SourceRecord):
    """include.contracts.orders.Order with pydantic's stock types: what the contract was before tuning."""

    order_id: RecordId
    customer_id: RecordId
    order_ts: Annotated[AwareDatetime, BeforeValidator(_string_input)]
    updated_at: Annotated[AwareDatetime, BeforeValidator(_string_input)]
    amount: Annotated[Decimal, Field(max_digits=12, decimal_places=2, ge=0)]
    status: Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z][a-z_]{0,31}$")]

    @model_validator(mode="after")
    def _updated_after_ordered(self) -> Self:
        if self.updated_at < self.order_ts:
            raise ValueError("updated_at is before order_ts")
        return self


def cpu_seconds(step: Callable[[], object], repeats: int) -> float:
    """Least process CPU time of `step` over `repeats` runs, the cyclic GC off as the sync has it."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        started = time.process_time()
        step()
        best = min(best, time.process_time() - started)
        gc.enable()
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    selection = select("orders", DAY, DAY + timedelta(days=1), Volumes(orders=args.records, customers=200))
    pages = [
        selection.records_json(offset, PAGE_SIZE)[0].encode() for offset in range(0, args.records, PAGE_SIZE)
    ]
    records = [msgspec.json.decode(page) for page in pages]
    pick = attrgetter(*TARGET.columns)
    contracts = {"tuned": Order, "plain": PlainOrder}
    validators = {name: model.__pydantic_validator__.validate_python for name, model in contracts.items()}
    rows = {
        name: [list(map(pick, map(validate, page))) for page in records]
        for name, validate in validators.items()
    }
    assert rows["tuned"] == rows["plain"], "the tuned contract must give the rows the plain one gives"

    per_million = 1_000_000 / args.records
    figures: dict[str, dict[str, float]] = {step: {} for step in ("decode", "validate", "dump")}
    with psycopg.connect(os.environ.get("BENCH_PG_URL", DEFAULT_URL), autocommit=True) as conn:
        conn.execute(
            "CREATE TEMP TABLE bench_orders (order_id bigint, customer_id bigint, order_ts timestamptz, "
            "updated_at timestamptz, amount numeric(12,2), status text)"
        )
        types = [
            conn.execute("SELECT %s::regtype::oid", (name,)).fetchone()[0]
            for name in ("int8", "int8", "timestamptz", "timestamptz", "numeric", "text")
        ]

        def dump(pages_of_rows: list[list[tuple]]) -> None:
            conn.execute("TRUNCATE bench_orders")
            with conn.cursor() as cur, cur.copy("COPY bench_orders FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(types)
                for page_rows in pages_of_rows:
                    for row in page_rows:
                        copy.write_row(row)

        steps = {
            ("decode", "json.loads"): lambda: [json.loads(page) for page in pages],
            ("decode", "msgspec"): lambda: [msgspec.json.decode(page) for page in pages],
            **{
                ("validate", name): (lambda v=validate: [list(map(pick, map(v, page))) for page in records])
                for name, validate in validators.items()
            },
            **{("dump", name): (lambda r=rows[name]: dump(r)) for name in contracts},
        }
        for (step, variant), run in steps.items():
            figures[step][variant] = round(cpu_seconds(run, args.repeats) * per_million, 3)

    figures["client_cpu_per_million"] = {
        "before (json.loads + plain contract)": round(
            figures["decode"]["json.loads"] + figures["validate"]["plain"] + figures["dump"]["plain"], 2
        ),
        "now (msgspec + tuned contract)": round(
            figures["decode"]["msgspec"] + figures["validate"]["tuned"] + figures["dump"]["tuned"], 2
        ),
    }
    write_result(
        "contract_cost",
        {
            "command": "python -m bench.contract_cost " + " ".join(sys.argv[1:]),
            "records": args.records,
            "page_size": PAGE_SIZE,
            "repeats": args.repeats,
            "unit": "CPU seconds per 1M records (least of the repeats)",
            **figures,
        },
    )


if __name__ == "__main__":
    main()
