import Foundation
import GRDB
import GRDBSQLite
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The durable outbox: the only type that speaks SQL. Every public method is one short
/// transaction; no network call ever happens inside one.
public final class Outbox: Sendable {
    let pool: DatabasePool
    public let path: String
    /// Pending + in-flight count per account, refreshed from the file at most every second and
    /// bumped on each accept, so ingest can enforce `max_backlog` without a COUNT per request.
    let backlog = Mutex<[String: (count: Int, refreshedAt: Date)]>([:])
    /// Ingest's group commit (`accept`): one fsync for every submission that arrived meanwhile.
    let acceptQueue = GroupCommit<PendingAccept, AcceptResult>()
    /// The workers' claims and outcomes, grouped the same way, in one queue (two fsyncs per
    /// delivery would otherwise bound delivery at half the disk's commit rate).
    let deliveryQueue = GroupCommit<DeliveryWrite, DeliveryWriteResult>()
    let files = OutboxFileWatch()
    /// Accounts a reload is removing: their submissions are refused inside the write transaction
    /// (`closeAccounts`).
    let closedAccounts = Mutex<Set<String>>([])
    /// The last step forward of the wall clock whose open windows were moved
    /// (`shiftOpenWindows`): the time just before it and its length. An outcome whose time was
    /// read before the step and written after the move is moved too (`inCurrentFrame`).
    let forwardStep = Mutex<(before: Date, seconds: Double)?>(nil)
    /// The settled states' counts (`liveStatus`): a scan from a snapshot, plus what this
    /// process settled since.
    let settled = Mutex(SettledCounts())
    /// `PRAGMA data_version` as the writer connection last read it (`noticeOtherWriters`).
    let otherWritersSeen = Mutex<Int?>(nil)
    /// Accounts with nothing due, as the last claims found them (`QuietAccounts`).
    let quiet = QuietAccounts()
    /// Large payloads held by the workers from the claim until the delivery is over (`PayloadMemory`).
    public let payloadMemory: PayloadMemory
    /// What SQLite said when it found the file damaged (`SQLITE_CORRUPT`, `SQLITE_NOTADB`), for
    /// the rest of this process: see `damage`.
    let damageFound = Mutex<String?>(nil)
    /// `probeWritable`'s write, shared by the callers of `/readyz`.
    let readiness = SharedRefresh<Bool>(scalesWithCost: false, keeping: { $0 })

    /// Opens (creating 0700 directory and 0600 file if needed) and migrates the outbox.
    /// `walSizeLimitBytes`: what a checkpointed WAL is cut back to (smaller in a test).
    public init(path: String, payloadMemory: PayloadMemory = PayloadMemory(), walSizeLimitBytes: Int = Outbox.walSizeLimitBytes) throws {
        self.path = path
        self.payloadMemory = payloadMemory

        try Self.ensureDirectory(for: path)
        let fm = FileManager.default
        if !fm.fileExists(atPath: path) {
            // Create the file ourselves so it is 0600 from its first byte; SQLite gives the
            // -wal and -shm files the same mode. Where the path leads: through a symlink to a
            // file not created yet, O_EXCL on the link itself would fail.
            let fd = open(OutboxLock.canonicalPath(path), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 { Glibc.close(fd) }
        }
        var configuration = Configuration()
        configuration.busyMode = .timeout(TimeInterval(Self.busyTimeoutSeconds))
        configuration.prepareDatabase { db in
            // Takes effect only in a file with no table yet (a new outbox, before GRDB turns WAL
            // on); an existing outbox keeps the page size it was created with.
            try db.execute(sql: "PRAGMA page_size = \(Self.pageSize)")
            try db.execute(sql: "PRAGMA synchronous = FULL")
            // Erased payloads (`forget`, retention) are overwritten with zeros in the database
            // file, not just left in freed pages where a copy of it would still show them (the
            // WAL's older frames keep them until reused). Debian's SQLite is built with this
            // default; other builds are not.
            try db.execute(sql: "PRAGMA secure_delete = ON")
            // Readers (status, metrics, the read API, readiness) scan little and rarely: a small
            // page cache each. The writer gets SQLite's default back below.
            try db.execute(sql: "PRAGMA cache_size = -512")
        }
        configuration.maximumReaderCount = 3
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            // GRDB sets synchronous=NORMAL on the WAL writer after prepareDatabase: set FULL again,
            // so that a 202 really means fsync'd.
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA synchronous = FULL")
                try db.execute(sql: "PRAGMA cache_size = -2000")
                // A reader that held the WAL open (an operator's `sqlite3` shell, a long backup)
                // lets it grow; once checkpointed, the file is cut back to this, not kept at its
                // peak until the daemon stops (found from outside: 195 MB after a reader had
                // held it during 4,000 webhooks).
                try db.execute(sql: "PRAGMA journal_size_limit = \(walSizeLimitBytes)")
            }
            // An outbox a newer version migrated (a downgrade): this binary does not know its
            // schema, so it must not write to it (it opened it without a word).
            let unknown = try pool.read { db -> [String] in
                guard try db.tableExists("grdb_migrations") else { return [] }
                let known = Set(OutboxSchema.migrator.migrations)
                return try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations").filter { !known.contains($0) }.sorted()
            }
            if !unknown.isEmpty {
                throw OutboxError.newerRelease("cannot open \(path): it was written by a newer candidate-relay (schema migrations "
                    + "\(unknown.joined(separator: ", ")) are unknown to this version); run that version, or restore a copy made before it")
            }
            try Self.migrate(pool)
            // The path as configured (through a symlink: what a restart would open, so a
            // symlink pointed elsewhere counts as replaced), and the WAL and shared-memory files
            // beside the file SQLite opened (it resolves symlinks). A deleted -shm lets another
            // process's SQLite (an admin command) think it is alone, checkpoint, and delete the
            // live WAL when it closes.
            let canonical = OutboxLock.canonicalPath(path)
            files.record([path, canonical + "-wal", canonical + "-shm"])
        } catch let error as OutboxError {
            throw error
        } catch {
            // Its header or schema damaged: named as such (`Outbox.damage(in:)`), for the start's
            // `storage.damaged` and its exit status.
            if let damage = Self.damage(in: error) { throw OutboxError.damaged("cannot open \(path): \(damage)") }
            throw Self.fullOrStorage(error, path: path, "cannot open \(path): \(error)")
        }

    }

    /// Runs the migrations still to run, again when another process ran them meanwhile. Every
    /// process of a new release migrates an old outbox at its first open, the daemon and the
    /// admin commands alike, and GRDB decides what is to run before it takes the write lock: the
    /// second one ran a migration the first had just committed and failed (found from outside:
    /// `status` during a daemon's first start on a large outbox, and either exited 1 on
    /// `UNIQUE constraint failed: grdb_migrations.identifier`). The failed one rolled back whole
    /// (a migration is one transaction, its identifier written last), so it is tried again while
    /// the applied migrations grew meanwhile, and twice more when the file stayed busy (each
    /// wait is SQLite's busy timeout): a lock held longer (a `sqlite3` shell left in a
    /// transaction) still fails the open, as before, not after minutes of silence.
    static func migrate(_ pool: DatabasePool) throws {
        let migrator = OutboxSchema.migrator
        var tries = 0
        var busyTries = 0
        while true {
            let before = try pool.read { try migrator.appliedIdentifiers($0) }
            do {
                try migrator.migrate(pool)
                return
            } catch {
                tries += 1
                let after = try pool.read { try migrator.appliedIdentifiers($0) }
                let busy = (error as? DatabaseError)?.resultCode == .SQLITE_BUSY
                if busy { busyTries += 1 }
                guard after != before || (busy && busyTries <= 2), tries < 100 else { throw error }
            }
        }
    }

    /// Creates the outbox's directory 0700 when it does not exist yet.
    static func ensureDirectory(for path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        guard !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) else { return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            let message = "cannot create directory \(directory): \(error.localizedDescription)"
            // Out of space or inodes (found from outside: a start waited on a full disk but not
            // on one whose inodes were used up).
            throw isNearlyFull(directory: directory) ? OutboxError.full(message) : OutboxError.storage(message)
        }
    }

    /// The size a checkpointed WAL is cut back to (`PRAGMA journal_size_limit`).
    public static let walSizeLimitBytes = 64 << 20

    /// The page size of a new outbox: 2 KB, not SQLite's 4 KB. Every commit writes each page it
    /// touched whole, to the WAL and again to the file at the checkpoint. A candidate of 2 to
    /// 4 KB took a 4 KB payload page alone (two do not fit); the index pages an accept touches
    /// are each rewritten per commit too. With 2 KB pages a ~2 KB candidate writes about a third
    /// fewer bytes, and the writer's cycle, which waits for those bytes to reach the disk, is
    /// shorter (docs/performance.md, "After `fb30782`").
    public static let pageSize = 2048

    /// `PRAGMA synchronous` as the writer connection sees it (2 = FULL).
    public func writerSynchronousMode() throws -> Int {
        try pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    /// A real write (one row rewritten, so a WAL frame and an fsync) for `/readyz`: false
    /// when the disk is full or read-only, when ingest would answer 503 too. Callers share it
    /// (`SharedRefresh`): a probe in flight is joined, a success stands for a second, a failure
    /// is never reused. The files are looked at on every call.
    public func probeWritable() async -> Bool {
        if filesProblem() != nil { return false }
        return await readiness.value { [self] in
            do {
                try await pool.write { db in
                    try db.execute(sql: "INSERT INTO readiness_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                                   arguments: [Date().millis])
                }
                return true
            } catch {
                _ = storageError(error)  // a damaged file is noted, whoever finds it
                return false
            }
        }
    }

    /// Nil while the outbox's file, its WAL and its -shm are those opened; else why not (until
    /// they are again). When the WAL or the -shm is found gone, what the WAL holds is checkpointed
    /// into the database file, which a restart still reads (a kill -9 lost every event
    /// committed before the `rm`). Looked at for every ingest batch (two or three `stat`s) and
    /// every second by the heartbeat.
    public func filesProblem() -> String? {
        files.problem { _, isDatabaseFile in
            guard !isDatabaseFile else { return }
            pool.asyncWriteWithoutTransaction { db in try? db.execute(sql: "PRAGMA wal_checkpoint(FULL)") }
        }
    }

    /// Whether the problem `filesProblem` last named is the `-wal`'s or the `-shm`'s (not the
    /// database file's).
    public var isWALProblem: Bool { !files.problemIsDatabaseFile }

    /// Copies the WAL into the database file now (and waits for it).
    public func checkpointNow() async throws {
        try await pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA wal_checkpoint(FULL)") }
    }

    /// Why another process must not open the outbox now, nil when it may: a daemon serves it
    /// and its `-wal` or `-shm` is gone. SQLite would then make a second WAL beside the
    /// daemon's deleted one, sharing one index: a `status` found the file "malformed", and the
    /// daemon's next checkpoint wrote pages from the wrong WAL ("not a database" after a clean
    /// restart that, without it, kept everything). Found from outside.
    public static func sharingProblem(path: String) -> String? {
        guard OutboxLock.isHeld(outboxPath: path) else { return nil }
        let canonical = OutboxLock.canonicalPath(path)
        let daemon = OutboxLock.holder(outboxPath: path).map { "the daemon (pid \($0))" } ?? "a daemon"
        for suffix in ["-wal", "-shm"] where !FileManager.default.fileExists(atPath: canonical + suffix) {
            return "\(daemon) serves \(path), but its \(suffix) file is gone: opening it now could corrupt it. "
                + "Stop the daemon cleanly first (it copies what the \(suffix == "-wal" ? "deleted WAL" : "WAL") holds into the database file), "
                + "then run this again"
        }
        return nil
    }

    /// Bytes an unprivileged writer may still use on the outbox's filesystem (nil if unknown).
    public func freeBytes() -> Int? {
        Self.freeSpace(directory: (path as NSString).deletingLastPathComponent)?.bytes
    }

    /// Bytes an unprivileged writer may still use in `directory`'s filesystem (or the nearest
    /// existing parent's), and whether it has run out of inodes (never, on a filesystem without
    /// an inode count: btrfs reports none).
    static func freeSpace(directory: String) -> (bytes: Int, outOfInodes: Bool)? {
        var directory = directory.isEmpty ? "." : directory
        var stats = statvfs()
        while statvfs(directory, &stats) != 0 {
            let parent = (directory as NSString).deletingLastPathComponent
            guard !parent.isEmpty, parent != directory else { return nil }
            directory = parent
        }
        return (Int(stats.f_bavail) * Int(stats.f_frsize), stats.f_files > 0 && stats.f_favail == 0)
    }

    /// Below this, an I/O error is taken for a full disk (a failed grow of SQLite's
    /// shared-memory file is "disk I/O error", not "database or disk is full").
    static let nearlyFullBytes = 1 << 20

    /// Less than `nearlyFullBytes` or no inode left in `directory`'s filesystem.
    static func isNearlyFull(directory: String) -> Bool {
        guard let space = freeSpace(directory: directory) else { return false }
        return space.bytes < nearlyFullBytes || space.outOfInodes
    }

    /// `OutboxError.full` for SQLite's `SQLITE_FULL`, and for an I/O or open error while the
    /// outbox's filesystem has (nearly) no space or inode left; else `.storage(message)`.
    static func fullOrStorage(_ error: any Error, path: String, _ message: String) -> OutboxError {
        guard let error = error as? DatabaseError else { return .storage(message) }
        switch error.resultCode.primaryResultCode {
        case .SQLITE_FULL:
            return .full(message)
        case .SQLITE_IOERR, .SQLITE_CANTOPEN:
            // "disk I/O error" (a failed grow of the shared memory), "unable to open database
            // file" (no inode for the WAL or the shared memory; found from outside).
            return isNearlyFull(directory: (OutboxLock.canonicalPath(path) as NSString).deletingLastPathComponent)
                ? .full(message) : .storage(message)
        default:
            return .storage(message)
        }
    }

    /// Returns once the writer connection answers (for the watchdog): a write transaction on
    /// the writer's queue, behind every write queued before it, that takes SQLite's write lock
    /// and commits nothing, so a stuck writer, or a disk hung under the writes before it, never
    /// returns and systemd restarts the daemon. It writes nothing itself: its commit has no
    /// page to write and no fsync (a `PRAGMA user_version` write before was a commit and an
    /// fsync every second; with the wall clock's, an idle daemon wrote ~570 MB a day: found
    /// from outside). A write that fails is an answer too: a full disk (ingest answers 503 and
    /// the daemon rides it out), a damaged file or a deleted WAL each have their own handling,
    /// which a restart would only cut short. Found from outside: a failed write (SQLITE_FULL)
    /// sent no `WATCHDOG=1`, and systemd aborted the daemon 30 s into a full disk.
    public func probeResponsive() async {
        do {
            try await pool.writeWithoutTransaction { db in try db.inTransaction(.immediate) { .commit } }
        } catch {
            _ = storageError(error)
        }
    }

    /// Runs `body` as one write transaction, mapping any database error to `OutboxError.storage`.
    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        if let damage { throw OutboxError.damaged(damage) }
        do {
            return try await pool.write(body)
        } catch let error as OutboxError {
            throw error
        } catch {
            // A cancelled task (shutdown) is not a storage failure.
            if error is CancellationError || Task.isCancelled { throw CancellationError() }
            throw storageError(error)
        }
    }

    /// Why the outbox is not to be written any more: SQLite found its file damaged (a page that
    /// is not what its b-tree says, a header that is not SQLite's). Found from outside: with one
    /// page of the events table overwritten, the daemon went on answering 202 and `/readyz` 200
    /// while every worker's claim failed, so nothing was delivered, and the log said only
    /// `storage_error` every 5 s. From the first such error on, `write` and `writeBatch` refuse
    /// (SQLite warns that writing to a damaged file can spread the damage): ingest answers 503
    /// (a sender retries later), deliveries, rescues and retention stop; reads go on. `/readyz`
    /// says `storage_damaged`, and the heartbeat logs `storage.damaged` and puts it in STATUS=.
    /// It lasts until a restart: the file does not mend itself. (The two probes write on their
    /// own: the watchdog's must not restart the daemon, which would forget what it found.)
    /// Not noted while `filesProblem` names a file deleted or replaced: that error is the
    /// replacement's, and it clears when the file is back.
    public var damage: String? { damageFound.withLock { $0 } }

    /// SQLite's words when `error` says an outbox file is damaged (`SQLITE_CORRUPT`,
    /// `SQLITE_NOTADB`), else nil: for a start that failed on it, where no `Outbox` holds it.
    public static func damage(in error: any Error) -> String? {
        if case OutboxError.damaged(let said) = error { return said }
        guard let error = error as? DatabaseError,
              error.resultCode.primaryResultCode == .SQLITE_CORRUPT || error.resultCode.primaryResultCode == .SQLITE_NOTADB
        else { return nil }
        // The code and SQLite's own words for it ("database disk image is malformed"): no SQL, no values.
        return "SQLite error \(error.resultCode.rawValue): \(String(cString: sqlite3_errstr(error.resultCode.rawValue)))"
    }

    /// The error to throw for a failed SQLite call, noting a damaged file (`damage`).
    func storageError(_ error: any Error) -> OutboxError {
        if let error = error as? OutboxError { return error }
        if let said = Self.damage(in: error), filesProblem() == nil {
            damageFound.withLock { if $0 == nil { $0 = said } }
            return .damaged(said)
        }
        return Self.fullOrStorage(error, path: path, "\(error)")
    }

    /// Runs `body` as one write transaction as a job on SQLite's writer queue and calls `then`
    /// there with its result (database errors as `OutboxError.storage`), without a task: the
    /// group commits chain their batches this way.
    func writeBatch<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T,
                                 then: @escaping @Sendable (Result<T, any Error>) -> Void) {
        // The damage is looked at inside the job, on the writer queue: damage found by the batch
        // before is seen, and `then` is never called from here (a group commit's drain that
        // failed at once would recurse into its next batch on the caller's stack).
        pool.asyncWrite({ db in
            if let damage = self.damage { throw OutboxError.damaged(damage) }
            return try body(db)
        }, completion: { _, result in
            then(result.mapError { error in self.storageError(error) })
        })
    }

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.read(body)
        } catch {
            if error is CancellationError || Task.isCancelled { throw CancellationError() }
            throw storageError(error)
        }
    }

    /// How long a connection waits for another's lock (another process's write, say).
    static let busyTimeoutSeconds = 10

    /// Copies the WAL into the database file and empties it, so that the older versions of
    /// erased pages (`forget`, `purge`, retention) no longer sit in it: `secure_delete` zeroes
    /// them in the database file only. False when a reader (the daemon's, or another process's:
    /// an `sqlite3` shell, a backup) or another writer kept it from completing within a quarter
    /// of a second; the frames are then overwritten as SQLite reuses the WAL.
    @discardableResult
    public func truncateWAL() async -> Bool {
        (try? await pool.writeWithoutTransaction(Self.truncate)) ?? false
    }

    /// How long emptying the WAL may wait for readers and writers. It holds the write lock while
    /// it waits: every write of the daemon, in any process, waits as long.
    static let truncateWaitMilliseconds = 250

    private static func truncate(_ db: Database) throws -> Bool {
        try db.execute(sql: "PRAGMA busy_timeout = \(truncateWaitMilliseconds)")
        defer { try? db.execute(sql: "PRAGMA busy_timeout = \(busyTimeoutSeconds * 1000)") }
        return try db.checkpoint(.truncate).walFrameCount == 0
    }

    /// Empties the WAL and closes the database at shutdown. (SQLite's own checkpoint when the
    /// last connection closes does not happen here: GRDB closes the writer first, and a
    /// read-only connection cannot take the lock it needs.)
    public func close() throws {
        _ = try? pool.writeWithoutTransaction(Self.truncate)
        try pool.close()
    }
}
