-- popbox schema version 1: maildrops, messages stored in blocks, users.
-- Applied by `popbox db migrate` (popbox/db/migrations.py) in one transaction.

-- One row per user that has (or had) mail; its id keys the RFC 1939 section 8 lock
-- (pg_try_advisory_lock(1347375155, id), see storage/postgresql.py).
CREATE TABLE maildrops (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE  -- the canonical user name (RFC 8265), as logins give it
);

-- UIDLs of delivered messages: a sequence never hands out a number twice, so a removed
-- message's UIDL never comes back (RFC 1939 section 7).
CREATE SEQUENCE message_uidl AS bigint;

CREATE TABLE messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- delivery order = listing order
    maildrop_id integer NOT NULL REFERENCES maildrops (id),
    -- RFC 1939 section 7: 1-70 characters in 0x21-0x7E. Imported messages keep theirs.
    unique_id text NOT NULL
        DEFAULT ('pg' || lpad(to_hex(nextval('message_uidl')), 12, '0'))
        CHECK (unique_id ~ '^[!-~]{1,70}$'),
    octets bigint NOT NULL CHECK (octets >= 0),  -- the size on the wire (RFC 1939 sec. 11)
    stored_octets bigint NOT NULL CHECK (stored_octets >= 0),  -- sum of the blocks
    delivered_at timestamptz NOT NULL DEFAULT now(),
    first_retrieved timestamptz,  -- RFC 2449 section 6.7 EXPIRE counts from here
    UNIQUE (maildrop_id, unique_id)
);
CREATE INDEX messages_listing ON messages (maildrop_id, id);

-- The message as stored (LF or CRLF line ends), in blocks of at most 64 KiB, so RETR
-- reads a few blocks at a time and never holds a large message whole.
CREATE TABLE message_blocks (
    message_id bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq integer NOT NULL CHECK (seq >= 0),
    data bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);

-- UIDLs `popbox import` has brought in, so that running it again neither duplicates a
-- message nor brings back one the user has since deleted.
CREATE TABLE imported_uidls (
    maildrop_id integer NOT NULL REFERENCES maildrops (id),
    unique_id text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (maildrop_id, unique_id)
);

-- The user database ([auth] database): secrets as in a Dovecot passwd-file.
CREATE TABLE users (
    name text PRIMARY KEY,  -- the canonical user name (RFC 8265 UsernameCasePreserved)
    secret text NOT NULL,   -- {SCHEME}secret; '' allows bearer-token logins only
    expire_days integer CHECK (expire_days >= 0),  -- this user's EXPIRE; NULL: the server's
    created_at timestamptz NOT NULL DEFAULT now()
);
