-- The key ring: asymmetric signing keys, each with its `kid`. A key signs
-- from `active_from` (seconds since the epoch) until a newer key of the
-- same algorithm is active, and verifies for as long as a token it signed
-- may live. The private key is PKCS#8 (Ed25519, P-256) or PKCS#1 (RSA)
-- DER, base64; only the public parts are ever published.
CREATE TABLE signing_keys (
    kid         TEXT   PRIMARY KEY,
    algorithm   TEXT   NOT NULL CHECK (algorithm IN ('EdDSA', 'ES256', 'RS256')),
    private_key TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    active_from BIGINT NOT NULL
);
