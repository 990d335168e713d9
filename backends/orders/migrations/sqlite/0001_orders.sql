CREATE TABLE orders (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id        INTEGER NOT NULL,
    sku            TEXT    NOT NULL,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    status         TEXT    NOT NULL CHECK (status IN ('placed', 'cancelled')),
    -- The inventory reservation holding this order's stock.
    reservation_id TEXT    NOT NULL UNIQUE,
    created_at     TEXT    NOT NULL
);
CREATE INDEX orders_user_newest ON orders (user_id, id DESC);
