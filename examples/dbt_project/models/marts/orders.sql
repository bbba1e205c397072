-- Incremental: a later run only adds orders newer than the newest one already loaded.
{{ config(materialized='incremental', unique_key='order_id', incremental_strategy='delete+insert') }}

select
    o.order_id,
    o.customer_id,
    o.order_date,
    o.status,
    coalesce(sum(p.amount), 0) as amount
from {{ ref('stg_orders') }} as o
left join {{ ref('stg_payments') }} as p on p.order_id = o.order_id
{% if is_incremental() %}
where o.order_date > (select max(order_date) from {{ this }})
{% endif %}
group by o.order_id, o.customer_id, o.order_date, o.status
