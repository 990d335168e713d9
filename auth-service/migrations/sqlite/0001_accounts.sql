-- Users. AUTOINCREMENT guarantees that the id of a deleted user is never
-- handed out again, so a stale token or header can never name a new user.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    role          TEXT    NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    active        BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TEXT    NOT NULL
);

-- A family is one login's chain of rotated refresh tokens; revoking it ends
-- that session everywhere.
CREATE TABLE token_families (
    id         TEXT    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT    NOT NULL
);
CREATE INDEX token_families_user_id ON token_families (user_id);

-- Only a hash of each refresh token's jti is kept.
CREATE TABLE refresh_tokens (
    jti_hash   TEXT    PRIMARY KEY,
    family_id  TEXT    NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    used       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_family_id ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
