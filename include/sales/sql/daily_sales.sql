-- The daily sales report (dags/sales/sales_daily_report.py): one row per (UTC day, customer country).
-- A day's rows are replaced together in one transaction (replace_daily_sales in
-- include/sales/daily_report.py), so a reader sees the old report or the new one, never a mix; a day
-- with no orders has no rows.
CREATE SCHEMA IF NOT EXISTS reports;

CREATE TABLE IF NOT EXISTS reports.daily_sales (
    report_day   date          NOT NULL,
    -- ISO 3166-1 alpha-2 from crm.customers, or 'unknown' for orders whose customer is not (yet) there
    country      text          NOT NULL,
    orders       bigint        NOT NULL CHECK (orders > 0),
    revenue      numeric(14,2) NOT NULL,
    customers    bigint        NOT NULL CHECK (customers > 0),
    -- the DAG run that wrote the day's rows
    run_id       text          NOT NULL,
    computed_at  timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (report_day, country)
);
