CREATE TABLE orders (
    id             BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        BIGINT      NOT NULL,
    sku            TEXT        NOT NULL,
    quantity       BIGINT      NOT NULL CHECK (quantity > 0),
    status         TEXT        NOT NULL CHECK (status IN ('placed', 'cancelled')),
    -- The inventory reservation holding this order's stock.
    reservation_id TEXT        NOT NULL UNIQUE,
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX orders_user_newest ON orders (user_id, id DESC);
