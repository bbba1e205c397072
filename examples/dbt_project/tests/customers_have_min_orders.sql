-- Fails (returns rows) for every customer with fewer than var('min_orders') orders.
select customer_id, order_count
from {{ ref('customer_orders') }}
where order_count < {{ var('min_orders') }}
