-- Events submitted by other processes (the `relais` command line while the server holds the
-- writer lock). The writer appends them to the tree and deletes them in the same transaction.
CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record TEXT NOT NULL,
    submitted_at TEXT NOT NULL
);
