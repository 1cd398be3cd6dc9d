import GRDB

/// Versioned migrations. A shipped migration is never edited: add a new one.
enum OutboxSchema {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1_events_and_attempts") { db in
            try db.execute(sql: """
                CREATE TABLE events (
                  id TEXT PRIMARY KEY NOT NULL,
                  idempotency_key TEXT UNIQUE,
                  body_sha256 TEXT NOT NULL,
                  state TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'in_flight', 'delivered', 'linked', 'dead')),
                  attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
                  -- Bumped by every claim and never reset (unlike attempts, which `events retry`
                  -- resets): what an outcome's compare-and-set is keyed on.
                  lease INTEGER NOT NULL DEFAULT 0,
                  position_uid TEXT NOT NULL,
                  partner_candidate_id TEXT NOT NULL,
                  payload BLOB,
                  candidate_uid TEXT,
                  received_at INTEGER NOT NULL,
                  -- max_age_seconds counts from here: received_at, or the last `events retry`
                  budget_started_at INTEGER NOT NULL,
                  updated_at INTEGER NOT NULL,
                  next_attempt_at INTEGER,
                  lease_expires_at INTEGER,
                  last_status INTEGER,
                  last_error TEXT,
                  partner_response TEXT,
                  partner_response_full BLOB,
                  payload_erased_at INTEGER,
                  CHECK ((state = 'in_flight') = (lease_expires_at IS NOT NULL)),
                  CHECK (state <> 'pending' OR next_attempt_at IS NOT NULL),
                  CHECK (state NOT IN ('delivered', 'linked') OR candidate_uid IS NOT NULL)
                );
                CREATE INDEX events_natural_key ON events(position_uid, partner_candidate_id);
                -- The claim walks this index in order and stops at the first free event (ids sort by arrival).
                CREATE INDEX events_due ON events(state, next_attempt_at, id);
                CREATE INDEX events_state_updated ON events(state, updated_at);

                CREATE TABLE attempts (
                  event_id TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
                  attempt INTEGER NOT NULL,
                  at INTEGER NOT NULL,
                  outcome TEXT NOT NULL
                    CHECK (outcome IN ('delivered', 'linked', 'retry', 'dead', 'interrupted', 'auth_retry')),
                  status INTEGER,
                  error TEXT,
                  latency_ms INTEGER
                );
                CREATE INDEX attempts_event ON attempts(event_id, at);
                CREATE INDEX attempts_at ON attempts(at);

                -- The state machine of CONTRACT section 5; anything else aborts the statement.
                CREATE TRIGGER events_state_transition BEFORE UPDATE OF state ON events
                WHEN OLD.state <> NEW.state AND NOT (
                  (OLD.state = 'pending' AND NEW.state IN ('in_flight', 'dead')) OR
                  (OLD.state = 'in_flight' AND NEW.state IN ('pending', 'delivered', 'linked', 'dead')) OR
                  (OLD.state = 'dead' AND NEW.state = 'pending'))
                BEGIN
                  SELECT RAISE(ABORT, 'illegal event state transition');
                END;
                """)
        }
        migrator.registerMigration("v2_readiness_probe") { db in
            // One row `/readyz` rewrites: proof that a write (and its fsync) still succeeds.
            try db.execute(sql: "CREATE TABLE readiness_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL)")
        }
        return migrator
    }
}
