-- Orders from the shop API (contract: include/contracts/orders.py), one row per order, kept current by
-- upsert on order_id. amount is exact money; updated_at is the source's last change of the order.
CREATE SCHEMA IF NOT EXISTS sales;

CREATE TABLE IF NOT EXISTS sales.orders (
    order_id     bigint        PRIMARY KEY,
    customer_id  bigint        NOT NULL,
    order_ts     timestamptz   NOT NULL,
    updated_at   timestamptz   NOT NULL,
    amount       numeric(12,2) NOT NULL,
    status       text          NOT NULL
);
