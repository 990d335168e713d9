-- Access tokens carry the version current when they were issued; bumping it
-- (when an existing account is promoted to admin from the command line)
-- invalidates every access token issued before.
ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
