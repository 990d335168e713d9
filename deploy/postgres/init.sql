-- Run once, when the PostgreSQL volume is first created: one database per
-- service (auth is POSTGRES_DB), each service migrating its own.
CREATE DATABASE tasks;
CREATE DATABASE orders;
CREATE DATABASE inventory;
