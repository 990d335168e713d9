CREATE TABLE tasks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL,
    title      TEXT    NOT NULL,
    completed  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
-- Every query filters by owner and lists newest first.
CREATE INDEX tasks_user_newest ON tasks (user_id, id DESC);
