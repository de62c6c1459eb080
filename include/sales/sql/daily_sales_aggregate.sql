-- One UTC day of sales by customer country: orders placed in [%(day_start)s, %(day_end)s) by order_ts,
-- cancelled orders excluded (they are neither sales nor revenue). An order whose customer is not in
-- crm.customers still counts, under country 'unknown', so the day's totals never lose orders.
-- Rows: (country, orders, revenue, customers), ordered by country.
SELECT coalesce(c.country, 'unknown')  AS country,
       count(*)                        AS orders,
       sum(o.amount)                   AS revenue,
       count(DISTINCT o.customer_id)   AS customers
  FROM sales.orders AS o
  LEFT JOIN crm.customers AS c ON c.customer_id = o.customer_id
 WHERE o.order_ts >= %(day_start)s
   AND o.order_ts < %(day_end)s
   AND o.status <> 'cancelled'
 GROUP BY 1
 ORDER BY 1
