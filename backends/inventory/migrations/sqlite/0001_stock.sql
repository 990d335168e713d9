CREATE TABLE stock (
    sku      TEXT    PRIMARY KEY,
    name     TEXT    NOT NULL,
    -- The constraint is the last line of defence; reservations are a
    -- conditional UPDATE that never takes quantity below zero.
    quantity INTEGER NOT NULL CHECK (quantity >= 0)
);

-- One row per reservation made for an order, so that reserving and
-- releasing are idempotent: a retried call changes nothing twice.
CREATE TABLE reservations (
    id       TEXT    PRIMARY KEY,
    sku      TEXT    NOT NULL REFERENCES stock (sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0)
);

INSERT INTO stock (sku, name, quantity) VALUES
    ('KB-001', 'Mechanical keyboard', 25),
    ('MS-002', 'Wireless mouse', 40),
    ('MN-003', '27-inch monitor', 10),
    ('CB-004', 'USB-C cable', 100);
