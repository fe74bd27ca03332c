"""PostgreSQL plumbing shared by the store (storage/postgresql.py) and the user database
(auth/pgusers.py): connection URLs, a connection pool that backs off while the database is
unreachable, and the versioned schema that `popbox db migrate` creates and upgrades."""
