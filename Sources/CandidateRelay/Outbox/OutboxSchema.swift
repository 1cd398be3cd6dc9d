import GRDB

/// Versioned migrations. A shipped migration is never edited: add a new one.
///
/// A new migration must keep `events.body_sha256 NOT NULL`: the accept's insert relies on it to
/// skip a replay of an erased idempotency key (`Outbox.insertUnlessReplayed`; a test checks the
/// column).
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
        migrator.registerMigration("v3_accounts") { db in
            // Every event gains its account (CONTRACT section 8); the ones already stored are the
            // `default` account's. Idempotency keys become unique per account, which SQLite can
            // only do by rebuilding the table (its documented 12-step procedure; GRDB runs
            // migrations with foreign keys off and checks them before committing).
            try db.execute(sql: """
                CREATE TABLE events_v3 (
                  id TEXT PRIMARY KEY NOT NULL,
                  account TEXT NOT NULL DEFAULT 'default',
                  idempotency_key TEXT,
                  body_sha256 TEXT NOT NULL,
                  state TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'in_flight', 'delivered', 'linked', 'dead')),
                  attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
                  lease INTEGER NOT NULL DEFAULT 0,
                  position_uid TEXT NOT NULL,
                  partner_candidate_id TEXT NOT NULL,
                  payload BLOB,
                  candidate_uid TEXT,
                  received_at INTEGER NOT NULL,
                  budget_started_at INTEGER NOT NULL,
                  updated_at INTEGER NOT NULL,
                  next_attempt_at INTEGER,
                  lease_expires_at INTEGER,
                  last_status INTEGER,
                  last_error TEXT,
                  partner_response TEXT,
                  partner_response_full BLOB,
                  payload_erased_at INTEGER,
                  UNIQUE (account, idempotency_key),
                  CHECK ((state = 'in_flight') = (lease_expires_at IS NOT NULL)),
                  CHECK (state <> 'pending' OR next_attempt_at IS NOT NULL),
                  CHECK (state NOT IN ('delivered', 'linked') OR candidate_uid IS NOT NULL)
                );
                INSERT INTO events_v3 (id, account, idempotency_key, body_sha256, state, attempts, lease, position_uid,
                  partner_candidate_id, payload, candidate_uid, received_at, budget_started_at, updated_at, next_attempt_at,
                  lease_expires_at, last_status, last_error, partner_response, partner_response_full, payload_erased_at)
                SELECT id, 'default', idempotency_key, body_sha256, state, attempts, lease, position_uid,
                  partner_candidate_id, payload, candidate_uid, received_at, budget_started_at, updated_at, next_attempt_at,
                  lease_expires_at, last_status, last_error, partner_response, partner_response_full, payload_erased_at
                FROM events;
                DROP TABLE events;
                ALTER TABLE events_v3 RENAME TO events;
                -- "One in flight" and the read API are per (account, position_uid, partner_candidate_id).
                CREATE INDEX events_natural_key ON events(account, position_uid, partner_candidate_id);
                -- Each account's claim walks its own part of this index, oldest due first.
                CREATE INDEX events_due ON events(account, state, next_attempt_at, id);
                CREATE INDEX events_state_updated ON events(state, updated_at);
                -- `forget` finds a candidate's events in every account.
                -- The trigger (dropped with the old table) is v1's, repeated on purpose: a
                -- migration is a frozen snapshot and shares no SQL with another one.
                CREATE INDEX events_partner_candidate ON events(partner_candidate_id);
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
        migrator.registerMigration("v4_payloads") { db in
            // Payloads move to a table of their own: SQLite rewrites the whole row on every
            // UPDATE, so with the payload in `events` each claim and each outcome read and wrote
            // the body again (a 20 MB candidate cost 60 MB of memory per outcome). Erasing a
            // payload is now deleting its row; `payload_erased_at` stays on the event.
            try db.execute(sql: """
                CREATE TABLE payloads (
                  event_id TEXT PRIMARY KEY NOT NULL REFERENCES events(id) ON DELETE CASCADE,
                  body BLOB NOT NULL
                );
                INSERT INTO payloads (event_id, body) SELECT id, payload FROM events WHERE payload IS NOT NULL;
                ALTER TABLE events DROP COLUMN payload;
                -- One index on the natural key serves the claim's "none in flight" check and the
                -- read API (equality on all three columns, in any order) and, led by
                -- partner_candidate_id, `forget` in every account: v3's separate
                -- events_partner_candidate index cost every insert one more random page write.
                DROP INDEX events_partner_candidate;
                DROP INDEX events_natural_key;
                CREATE INDEX events_natural_key ON events(partner_candidate_id, position_uid, account);
                """)
        }
        migrator.registerMigration("v5_holds") { db in
            // The partner's Retry-After pauses, the open circuit and a refused account's
            // credentials back-off, until when: a restart lost them and sent at once (a crash
            // loop ignored the partner's "retry later" every time).
            try db.execute(sql: "CREATE TABLE holds (scope TEXT PRIMARY KEY NOT NULL, until INTEGER NOT NULL)")
        }
        migrator.registerMigration("v6_wall_clock") { db in
            // The wall clock the daemon last saw (each heartbeat tick), in the frame of the
            // schedules stored: later than the clock at the next start means the clock went back
            // while the daemon was stopped (`Outbox.rebaseSchedules`). And a rebase in progress:
            // its step, its now, the last rowid it covers and the rowids done, each chunk
            // committed with its progress, so that one cut short goes on and never moves a row twice.
            try db.execute(sql: """
                CREATE TABLE wall_clock (
                  id INTEGER PRIMARY KEY CHECK (id = 1),
                  seen INTEGER NOT NULL,
                  rebase_step INTEGER,
                  rebase_now INTEGER,
                  rebase_last INTEGER,
                  rebase_done INTEGER
                )
                """)
        }
        migrator.registerMigration("v7_partner_open_until") { db in
            // Until when a request of this event given up without an answer (a timeout, a
            // reset, a shutdown's hand-back, a crash) may still be at work at the partner. The
            // event's own resend waited for it already; another event of the same candidate did
            // not, and was sent at once (found from outside): two creates of one candidate open
            // at the partner at the same time can both pass its 409 check. The claim now waits
            // for it per natural key, as it waits for a request in flight.
            try db.execute(sql: "ALTER TABLE events ADD COLUMN partner_open_until INTEGER")
            // The idle workers' next look: when the earliest such window of an account ends.
            try db.execute(sql: """
                CREATE INDEX events_partner_open ON events(account, partner_open_until) WHERE partner_open_until IS NOT NULL
                """)
        }
        migrator.registerMigration("v8_run_partner_timeout") { db in
            // The `partner.timeout_seconds` of the run that last started on this outbox. A
            // crash's in-flight events are held twice the timeout their requests were sent under:
            // held under a lowered one that the restart had just applied, the resend met the
            // first request still at work at the partner (found from outside: two candidates).
            try db.execute(sql: "ALTER TABLE wall_clock ADD COLUMN partner_timeout_ms INTEGER")
        }
        migrator.registerMigration("v9_events_key_busy") { db in
            // The events that hold their candidate's other events back: one in flight, or one
            // whose request may still be at the partner. The claim asks it of every due event it
            // walks past (`Outbox.keyIsFree`): through the natural key's index it read every
            // sibling, and a sender that posted 5,000 updates of one candidate made each claim
            // read millions of rows, on the writer, with every 202 waiting (found from outside:
            // other senders' 202s took ~1 s, delivery starved).
            try db.execute(sql: """
                CREATE INDEX events_key_busy ON events(partner_candidate_id, position_uid, account)
                WHERE state = 'in_flight' OR partner_open_until IS NOT NULL
                """)
        }
        migrator.registerMigration("v10_rebase_rows") { db in
            // The rows a clock step back's rebase moves, with their times when it began
            // (`Outbox.beginRebase`): it walks these, not every rowid of the outbox, and moves a
            // time only while it is still the one recorded.
            try db.execute(sql: """
                CREATE TABLE rebase_rows (
                  id INTEGER PRIMARY KEY,
                  next_attempt_at INTEGER,
                  budget_started_at INTEGER,
                  lease_expires_at INTEGER,
                  partner_open_until INTEGER
                )
                """)
            // A rebase a previous release began and did not finish (a crash): the rows it had
            // not reached yet, as they are.
            if let progress = try Row.fetchOne(db, sql: "SELECT rebase_now, rebase_last, rebase_done FROM wall_clock WHERE id = 1 AND rebase_step IS NOT NULL") {
                try Outbox.recordRebaseRows(db, now: progress[0], after: progress[2], upTo: progress[1])
            }
        }
        return migrator
    }
}
