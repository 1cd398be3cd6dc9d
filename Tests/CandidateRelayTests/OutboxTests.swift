import CandidateRelayTesting
import Crypto
import Foundation
import GRDB
import Testing
@testable import CandidateRelay

/// Real SQLite in a temporary directory, one per test.
@Suite struct OutboxTests {
    static func submission(_ id: String = EventID.generate(), key: String? = nil, body: String = "{}", position: String = "P1",
                           partnerID: String = "C1", at: Date = Date()) -> Submission {
        Submission(id: id, idempotencyKey: key, bodySHA256: String(body.hashValue), positionUID: position,
                   partnerCandidateID: partnerID, payload: Data(body.utf8), receivedAt: at)
    }

    /// A fresh outbox in a temporary directory; `cleanup()` the directory when done.
    static func open() throws -> (TemporaryDirectory, Outbox) {
        let dir = try TemporaryDirectory()
        return (dir, try Outbox(path: dir.file("o.sqlite3")))
    }

    /// The watchdog's probe takes the writer's lock and writes nothing: no WAL frame, no fsync
    /// (found from outside: with the wall clock's commit, an idle daemon wrote ~570 MB a day).
    @Test func theWatchdogsProbeWritesNothing() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("p1", partnerID: "p1"), maxBacklog: 10)
        func framesInTheWAL(_ mode: String = "PASSIVE") async throws -> Int {
            try await outbox.pool.writeWithoutTransaction { db in
                try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(\(mode))").map { $0[1] as Int } ?? -1
            }
        }
        #expect(try await framesInTheWAL("TRUNCATE") == 0)
        for _ in 0..<5 { await outbox.probeResponsive() }
        #expect(try await framesInTheWAL() == 0)
    }

    /// A reader that held the WAL open (an operator's `sqlite3` shell) let it grow past the
    /// limit; once it is gone and the WAL checkpointed, the next write cuts the file back to
    /// the limit instead of keeping it at its peak until the daemon stops (found from outside).
    @Test func aWALGrownBehindAReaderIsCutBackOnceCheckpointed() async throws {
        // A 1 MiB limit here (64 MiB in the daemon): a few writes, not 70 MB of fsync'd ones.
        let limit = 1 << 20
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: dir.file("o.sqlite3"), walSizeLimitBytes: limit)
        func walBytes() throws -> Int {
            try FileManager.default.attributesOfItem(atPath: dir.file("o.sqlite3-wal"))[.size] as? Int ?? 0
        }
        let reader = try DatabaseQueue(path: dir.file("o.sqlite3"))
        let body = "{\"x\":\"" + String(repeating: "y", count: 1 << 20) + "\"}"
        // A read transaction on a thread of its own holds the WAL while the writes go on.
        let (holding, release, done) = (DispatchSemaphore(value: 0), DispatchSemaphore(value: 0), DispatchSemaphore(value: 0))
        Thread {
            try? reader.read { db in
                _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM events")
                holding.signal()
                _ = release.wait(timeout: .now() + 60)
            }
            done.signal()
        }.start()
        #expect(holding.wait(timeout: .now() + 10) == .success)
        for n in 0..<3 { _ = try await outbox.accept(Self.submission(body: body, partnerID: "wal-\(n)"), maxBacklog: 1000) }
        #expect(try walBytes() > 2 * limit)
        release.signal()
        #expect(done.wait(timeout: .now() + 10) == .success)
        try reader.close()
        try await outbox.checkpointNow()
        _ = try await outbox.accept(Self.submission(partnerID: "after"), maxBacklog: 1000)
        #expect(try walBytes() <= limit)
    }

    /// `evt_`, the milliseconds in 12 hex digits (more only past them, never cut), 16 random ones;
    /// ids sort by arrival. Digests in lower-case hex.
    @Test func eventIDsAndHex() {
        let at = Date(millis: 0x0123_4567_89AB)
        let id = EventID.generate(now: at)
        #expect(id.hasPrefix("evt_0123456789ab") && id.utf8.count == 32)
        #expect(id.dropFirst(16).allSatisfy { "0123456789abcdef".contains($0) })
        #expect(EventID.generate(now: Date(millis: 5)).hasPrefix("evt_000000000005"))
        #expect(EventID.generate(now: Date(millis: 0x1_0000_0000_0000)).hasPrefix("evt_1000000000000"))
        #expect(EventID.generate(now: Date(millis: 0x1_0000_0000_0000)).utf8.count == 33)
        #expect(EventID.generate(now: at) < EventID.generate(now: at.addingTimeInterval(0.001)))
        #expect(Set((0..<100).map { _ in EventID.generate(now: at) }).count == 100)
        // The random words come 512 to a read: across several reads, none repeats, and their
        // bits are about half ones (a pool left zeroed, or read twice, would show).
        let words = (0..<2_000).map { _ in RandomWords.next() }
        #expect(Set(words).count == words.count)
        let ones = words.reduce(0) { $0 + $1.nonzeroBitCount }
        #expect(abs(Double(ones) / Double(words.count * 64) - 0.5) < 0.01)
        #expect(IngestHandler.hex(SHA256.hash(data: Data("abc".utf8)))
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func writerIsSynchronousFullAndFilesArePrivate() throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let path = dir.file("state/sub/outbox.sqlite3")
        let outbox = try Outbox(path: path)
        #expect(try outbox.writerSynchronousMode() == 2)
        // A new outbox gets 2 KB pages (`Outbox.pageSize`), not SQLite's 4 KB.
        #expect(try outbox.pool.read { db in try Int.fetchOne(db, sql: "PRAGMA page_size") } == 2048)
        let fileMode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        let dirMode = try FileManager.default.attributesOfItem(atPath: dir.file("state/sub"))[.posixPermissions] as? Int
        #expect(fileMode == 0o600)
        #expect(dirMode == 0o700)
    }

    /// The WAL deleted while open: ingest is refused and readiness fails (they went on, into a
    /// file no restart reads), and what the WAL held is copied into the database file, which a
    /// restart after a kill -9 still reads.
    @Test func aWALDeletedWhileOpenStopsIngestAndSavesWhatItHeld() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        for n in 0..<3 { _ = try await outbox.accept(Self.submission(partnerID: "before-\(n)"), maxBacklog: 100) }
        #expect(await outbox.probeWritable())
        try FileManager.default.removeItem(atPath: dir.file("o.sqlite3-wal"))
        #expect(await !outbox.probeWritable())
        await #expect(throws: OutboxError.self) { try await outbox.accept(Self.submission(partnerID: "after"), maxBacklog: 100) }
        // The checkpoint runs on the writer queue: a write after it has seen it done.
        _ = await outbox.probeWritable()
        try await outbox.pool.writeWithoutTransaction { _ in }
        // What a restart would read: the database file alone (this connection makes a new WAL).
        let reader = try DatabaseQueue(path: dir.file("o.sqlite3"))
        #expect(try await reader.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM events") } == 3)
        try reader.close()
    }

    /// `/readyz` needs no credentials and each probe was a fsync'd transaction of its own on
    /// the writer queue: 512 connections asking for it cut ingest tenfold (found from outside).
    /// Concurrent probes share one write, and a success answers for a second after it.
    @Test func readinessProbesShareOneWrite() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        func writes() async throws -> Int {
            try await outbox.pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "SELECT total_changes()") ?? 0 }
        }
        let before = try await writes()
        let answers = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<200 { group.addTask { await outbox.probeWritable() } }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(answers.count == 200 && answers.allSatisfy { $0 })
        // One write; two if the machine took over a second between the first and the last.
        #expect((1...2).contains(try await writes() - before))
    }

    /// A failed probe is never the answer to the next caller.
    @Test func aFailedReadinessProbeIsNotReused() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let refuse = """
            CREATE TEMP TRIGGER refuse_insert BEFORE INSERT ON readiness_probe BEGIN SELECT RAISE(ABORT, 'refused'); END;
            CREATE TEMP TRIGGER refuse_update BEFORE UPDATE ON readiness_probe BEGIN SELECT RAISE(ABORT, 'refused'); END;
            """
        try await outbox.pool.writeWithoutTransaction { db in try db.execute(sql: refuse) }
        #expect(await !outbox.probeWritable())
        #expect(await !outbox.probeWritable())
        try await outbox.pool.writeWithoutTransaction { db in
            try db.execute(sql: "DROP TRIGGER temp.refuse_insert; DROP TRIGGER temp.refuse_update")
        }
        #expect(await outbox.probeWritable())
    }

    /// Found from outside: with a page of the events table overwritten, the daemon went on
    /// answering 202 while every claim failed, and logged only `storage_error`. The first error
    /// that says the file is damaged is kept (`damage`), and nothing more is stored in it.
    @Test func aDamagedFileIsNamedAndNotWrittenAgain() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let path = dir.file("o.sqlite3")
        var outbox: Outbox? = try Outbox(path: path)
        for n in 0..<300 { _ = try await outbox!.accept(Self.submission(partnerID: "C\(n)"), maxBacklog: 1000) }
        try outbox!.close()
        outbox = nil
        let (page, pageSize) = try await DatabaseQueue(path: path).read { db in
            (try Int.fetchOne(db, sql: "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno LIMIT 1 OFFSET 2"),
             try Int.fetchOne(db, sql: "PRAGMA page_size") ?? 0)
        }
        let file = try #require(FileHandle(forUpdatingAtPath: path))
        try file.seek(toOffset: UInt64((try #require(page) - 1) * pageSize + 8))
        try file.write(contentsOf: Data(repeating: 0xDE, count: min(600, pageSize - 8)))
        try file.close()

        let damaged = try Outbox(path: path)
        #expect(damaged.damage == nil)
        do {
            _ = try await damaged.list(state: nil, limit: 1000)
            Issue.record("a read of every event succeeded")
        } catch OutboxError.damaged(let said) {
            #expect(said.hasPrefix("SQLite error 11"))
        }
        #expect(damaged.damage?.contains("malformed") == true)
        do {
            _ = try await damaged.accept(Self.submission(partnerID: "after"), maxBacklog: 1000)
            Issue.record("accepted into a damaged file")
        } catch OutboxError.damaged {}
        // Nothing more is written, deliveries included; reads go on where they can.
        await #expect(throws: OutboxError.self) { try await OutboxAccountsTests.claim(damaged, ["default"], at: Date()) }
        #expect(try await damaged.status(now: Date()).counts[.pending] == 300)
        #expect(OutboxError.logCode(OutboxError.damaged("x")) == "outbox_damaged")
    }

    @Test func theOutboxFileDeletedWhileOpenStopsIngest() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission(), maxBacklog: 100)
        try FileManager.default.removeItem(atPath: dir.file("o.sqlite3"))
        #expect(await !outbox.probeWritable())
        do {
            _ = try await outbox.accept(Self.submission(), maxBacklog: 100)
            Issue.record("accepted into a deleted file")
        } catch OutboxError.fileGone(let problem) {
            #expect(problem.contains("o.sqlite3 was deleted while open"))
        }
    }

    /// Moved away and back, it is the same file again: ingest goes on (it stayed 503 for good).
    @Test func theOutboxFileMovedAwayAndBackIsServedAgain() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        try FileManager.default.moveItem(atPath: dir.file("o.sqlite3"), toPath: dir.file("away"))
        await #expect(throws: OutboxError.self) { try await outbox.accept(Self.submission(), maxBacklog: 100) }
        try FileManager.default.moveItem(atPath: dir.file("away"), toPath: dir.file("o.sqlite3"))
        #expect(outbox.filesProblem() == nil)
        _ = try await outbox.accept(Self.submission(), maxBacklog: 100)
        #expect(await outbox.probeWritable())
    }

    /// Found from outside: a file that could not be looked up (a directory made unreadable) was
    /// said to be deleted. The cause is said now; ingest still waits (a restart could not open
    /// it either) and goes on once it can be looked up. (As root, as the tests run, no
    /// permission stops a lookup: a symbolic link that loops does, with ELOOP.)
    @Test func aFileThatCannotBeLookedUpIsNotSaidToBeDeleted() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        try FileManager.default.moveItem(atPath: dir.file("o.sqlite3"), toPath: dir.file("away"))
        try FileManager.default.createSymbolicLink(atPath: dir.file("o.sqlite3"), withDestinationPath: "o.sqlite3")
        let problem = try #require(outbox.filesProblem())
        #expect(problem.contains("o.sqlite3 cannot be looked up (Too many levels of symbolic links)"), "\(problem)")
        #expect(!problem.contains("deleted"))
        await #expect(throws: OutboxError.self) { try await outbox.accept(Self.submission(), maxBacklog: 100) }
        try FileManager.default.removeItem(atPath: dir.file("o.sqlite3"))
        try FileManager.default.moveItem(atPath: dir.file("away"), toPath: dir.file("o.sqlite3"))
        #expect(outbox.filesProblem() == nil)
        _ = try await outbox.accept(Self.submission(), maxBacklog: 100)
    }

    @Test func secondDaemonLockIsRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let lock = try OutboxLock(outboxPath: dir.file("o.sqlite3"))
        #expect(throws: OutboxLock.AlreadyLocked.self) { try OutboxLock(outboxPath: dir.file("o.sqlite3")) }
        // The .lock deleted (a cleaner): the database file's own lock still refuses a second
        // daemon, and so it does through a hard link, which no path resolution reveals.
        try FileManager.default.removeItem(atPath: dir.file("o.sqlite3.lock"))
        #expect(throws: OutboxLock.AlreadyLocked.self) { try OutboxLock(outboxPath: dir.file("o.sqlite3")) }
        #expect(link(dir.file("o.sqlite3"), dir.file("hard.sqlite3")) == 0)
        #expect(throws: OutboxLock.AlreadyLocked.self) { try OutboxLock(outboxPath: dir.file("hard.sqlite3")) }
        _ = lock
    }

    /// While a daemon holds the outbox and its -wal or -shm is gone, another process (an admin
    /// command) must not open it: its SQLite would make a second WAL sharing the daemon's index.
    @Test func anotherProcessIsToldNotToOpenAnOutboxMissingItsWALWhileServed() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission(), maxBacklog: 100)
        #expect(Outbox.sharingProblem(path: dir.file("o.sqlite3")) == nil)  // not served
        let lock = try OutboxLock(outboxPath: dir.file("o.sqlite3"))
        #expect(OutboxLock.isHeld(outboxPath: dir.file("o.sqlite3")))
        #expect(Outbox.sharingProblem(path: dir.file("o.sqlite3")) == nil)  // served, files in place
        try FileManager.default.removeItem(atPath: dir.file("o.sqlite3-wal"))
        #expect(Outbox.sharingProblem(path: dir.file("o.sqlite3"))?.contains("its -wal file is gone") == true)
        _ = lock
    }

    /// The -shm deleted: another process's SQLite would think itself alone, checkpoint and
    /// delete the live WAL when it closes. Ingest stops at once, and the WAL is checkpointed.
    @Test func aSharedMemoryFileDeletedWhileOpenStopsIngest() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission(), maxBacklog: 100)
        #expect(outbox.filesProblem() == nil)
        try FileManager.default.removeItem(atPath: dir.file("o.sqlite3-shm"))
        await #expect(throws: OutboxError.self) { try await outbox.accept(Self.submission(), maxBacklog: 100) }
        #expect(outbox.filesProblem()?.contains("o.sqlite3-shm was deleted while open") == true)
    }

    /// Another path to the same outbox — a symlink to the file, or to its directory — finds the
    /// same lock (the second daemon used to start through a symlink to the file, take the first
    /// one's leases back and send its events again).
    @Test func aSymlinkToTheOutboxFindsTheSameLock() throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let path = dir.file("state/o.sqlite3")
        let outbox = try Outbox(path: path)
        _ = outbox
        let lock = try OutboxLock(outboxPath: path)
        try FileManager.default.createSymbolicLink(atPath: dir.file("link.sqlite3"), withDestinationPath: path)
        try FileManager.default.createSymbolicLink(atPath: dir.file("linkdir"), withDestinationPath: dir.file("state"))
        #expect(throws: OutboxLock.AlreadyLocked.self) { try OutboxLock(outboxPath: dir.file("link.sqlite3")) }
        #expect(throws: OutboxLock.AlreadyLocked.self) { try OutboxLock(outboxPath: dir.file("linkdir/o.sqlite3")) }
        #expect(OutboxLock.holder(outboxPath: dir.file("link.sqlite3")) == getpid())
        #expect(ReloadReport.path(outboxPath: dir.file("link.sqlite3")) == ReloadReport.path(outboxPath: path))
        _ = lock
    }

    /// The first start through a symlink to a file that does not exist yet: the lock and the
    /// file (0600) go where the link leads, and the real path finds that lock.
    @Test func aSymlinkToAnOutboxNotCreatedYetLeadsToTheSameLockAndFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        try FileManager.default.createDirectory(atPath: dir.file("real"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir.file("links"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir.file("links/o.sqlite3"), withDestinationPath: "../real/o.sqlite3")
        let lock = try OutboxLock(outboxPath: dir.file("links/o.sqlite3"))
        let outbox = try Outbox(path: dir.file("links/o.sqlite3"))
        _ = outbox
        #expect(throws: OutboxLock.AlreadyLocked.self) { try OutboxLock(outboxPath: dir.file("real/o.sqlite3")) }
        let mode = try FileManager.default.attributesOfItem(atPath: dir.file("real/o.sqlite3"))[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(!FileManager.default.fileExists(atPath: dir.file("links/o.sqlite3.lock")))
        _ = lock
    }

    /// Emptying the WAL waits for a reader of another process only briefly (it holds the write
    /// lock meanwhile, so every write of the daemon waited with it, up to 10 s), then says it
    /// could not; once the reader is gone it succeeds.
    @Test func emptyingTheWALGivesUpSoonOnAnotherProcesssReader() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission(key: "k1", body: "a"), maxBacklog: 10)
        let reader = try DatabaseQueue(path: outbox.path)
        let opened = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        // As an `sqlite3` shell would: a read transaction left open (on a thread of its own).
        Thread {
            try? reader.inDatabase { db in
                try db.execute(sql: "BEGIN")
                _ = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM events")
                opened.signal()
                // Held 3 s at most: a truncate that waited for it as long as other writes do
                // (10 s) would succeed after it, instead of giving up.
                _ = release.wait(timeout: .now() + 3)
                try db.execute(sql: "COMMIT")
            }
            done.signal()
        }.start()
        opened.wait()
        #expect(await outbox.truncateWAL() == false)
        release.signal()
        done.wait()
        #expect(await outbox.truncateWAL() == true)
        // The writer's own timeout is back to its usual 10 s.
        #expect(try await outbox.write { db in try Int.fetchOne(db, sql: "PRAGMA busy_timeout") } == 10_000)
    }

    @Test func idempotencyKeyReturnsTheSameEventAndRefusesAnotherBody() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        guard case .created(let first) = try await outbox.accept(Self.submission(key: "k1", body: "a"), maxBacklog: 10) else {
            Issue.record("not created")
            return
        }
        guard case .duplicate(let again) = try await outbox.accept(Self.submission(key: "k1", body: "a"), maxBacklog: 10) else {
            Issue.record("not duplicate")
            return
        }
        #expect(again.id == first.id)
        await #expect(throws: OutboxError.self) { try await outbox.accept(Self.submission(key: "k1", body: "b"), maxBacklog: 10) }
        #expect(try await outbox.status(now: Date()).counts[.pending] == 1)
    }

    @Test func backlogLimitRefusesNewEvents() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission(), maxBacklog: 2)
        _ = try await outbox.accept(Self.submission(), maxBacklog: 2)
        await #expect(throws: OutboxError.self) { try await outbox.accept(Self.submission(), maxBacklog: 2) }
    }

    @Test func schemaRefusesIllegalTransitionsAndUnknownStates() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("e1"), maxBacklog: 10)
        await #expect(throws: (any Error).self) {
            try await outbox.pool.write { db in try db.execute(sql: "UPDATE events SET state = 'delivered', candidate_uid = 'x' WHERE id = 'e1'") }
        }
        await #expect(throws: (any Error).self) {
            try await outbox.pool.write { db in try db.execute(sql: "UPDATE events SET state = 'lost' WHERE id = 'e1'") }
        }
        await #expect(throws: (any Error).self) {
            // in_flight without a lease
            try await outbox.pool.write { db in try db.execute(sql: "UPDATE events SET state = 'in_flight' WHERE id = 'e1'") }
        }
    }

    @Test func completionIsACompareAndSetOnTheAttempt() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let now = Date()
        _ = try await outbox.accept(Self.submission("e1", at: now), maxBacklog: 10)
        let claimed = try #require(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1000))
        #expect(claimed.attempt == 1)
        // The lease is rescued and the event claimed again: the first worker's late answer must not land.
        #expect(try await outbox.recoverLeases(expiredBefore: now.addingTimeInterval(120), now: now) == 1)
        let again = try #require(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1000))
        #expect(again.attempt == 2)
        #expect(try await outbox.complete(claimed, outcome: .delivered(candidateUID: "late", status: 201, summary: nil, fullResponse: nil), now: now, latencyMs: 1) == false)
        #expect(try await outbox.complete(again, outcome: .linked(candidateUID: "u2", status: 409, error: "candidate_post_conflict"), now: now, latencyMs: 1))
        let record = try #require(try await outbox.record(id: "e1"))
        #expect(record.state == .linked)
        #expect(record.candidateUID == "u2")
        #expect(try await outbox.history(id: "e1").map(\.outcome) == ["linked"])
    }

    @Test func neverTwoInFlightForOneNaturalKey() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let now = Date()
        _ = try await outbox.accept(Self.submission("a", partnerID: "same", at: now), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("b", partnerID: "same", at: now.addingTimeInterval(0.001)), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("c", partnerID: "other", at: now.addingTimeInterval(0.002)), maxBacklog: 10)
        let first = try #require(try await outbox.claimNext(now: now.addingTimeInterval(1), leaseSeconds: 60, maxAgeSeconds: 1000))
        let second = try #require(try await outbox.claimNext(now: now.addingTimeInterval(1), leaseSeconds: 60, maxAgeSeconds: 1000))
        #expect(first.id == "a")
        #expect(second.id == "c")
        #expect(try await outbox.claimNext(now: now.addingTimeInterval(1), leaseSeconds: 60, maxAgeSeconds: 1000) == nil)
    }

    @Test func interruptedHandBackDoesNotUseAnAttempt() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let now = Date()
        _ = try await outbox.accept(Self.submission("e1", at: now), maxBacklog: 10)
        let claimed = try #require(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1000))
        #expect(try await outbox.complete(claimed, outcome: .interrupted(resendAt: now), now: now, latencyMs: nil))
        let record = try #require(try await outbox.record(id: "e1"))
        #expect(record.state == .pending)
        #expect(record.attempts == 0)
    }

    @Test func anAbandonedRequestsEventIsNotDueUntilThePartnerHadItsTimeout() async throws {
        // A request cut off unanswered (shutdown, crash) may still be at work at the partner: a
        // resend at once put two requests for one candidate there together (found from outside).
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let start = Date(timeIntervalSince1970: 1_000_000)
        _ = try await outbox.accept(Self.submission("cut", partnerID: "p1", at: start), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("crashed", partnerID: "p2", at: start.addingTimeInterval(0.001)), maxBacklog: 10)
        // Handed back at shutdown, 2 s into its request, with a 30 s hold: due at 32 s.
        let cut = try #require(try await outbox.claimNext(now: start, leaseSeconds: 600, maxAgeSeconds: 10_000))
        #expect(cut.id == "cut")
        let stop = start.addingTimeInterval(2)
        #expect(try await outbox.complete(cut, outcome: .interrupted(resendAt: stop.addingTimeInterval(30)), now: stop, latencyMs: nil))
        // Left in flight by a crash, claimed at 3 s; the restart at 10 s holds it until 10 + 30 s:
        // its request may have left well after the claim, and as late as the crash.
        let crashed = try #require(try await outbox.claimNext(now: start.addingTimeInterval(3), leaseSeconds: 600, maxAgeSeconds: 10_000))
        #expect(crashed.id == "crashed")
        #expect(try await outbox.recoverLeases(expiredBefore: nil, now: start.addingTimeInterval(10), holdSeconds: 30) == 1)
        #expect(try await outbox.claimNext(now: start.addingTimeInterval(31.9), leaseSeconds: 600, maxAgeSeconds: 10_000) == nil)
        #expect(try await outbox.claimNext(now: start.addingTimeInterval(32), leaseSeconds: 600, maxAgeSeconds: 10_000)?.id == "cut")
        #expect(try await outbox.claimNext(now: start.addingTimeInterval(39.9), leaseSeconds: 600, maxAgeSeconds: 10_000) == nil)
        #expect(try await outbox.claimNext(now: start.addingTimeInterval(40), leaseSeconds: 600, maxAgeSeconds: 10_000)?.id == "crashed")
        // A restart long after the claim holds it too, for the hold from the restart: when the
        // crash came is not known (found from outside: a token fetch or the resend after a 401
        // waiting for a place of the rate window came after the claim; held from the claim,
        // the resend met the first request still at work at the partner).
        let (dir2, other) = try Self.open()
        defer { dir2.cleanup() }
        _ = try await other.accept(Self.submission("old", at: start), maxBacklog: 10)
        _ = try #require(try await other.claimNext(now: start, leaseSeconds: 600, maxAgeSeconds: 10_000))
        try await other.recoverLeases(expiredBefore: nil, now: start.addingTimeInterval(100), holdSeconds: 30)
        #expect(try await other.claimNext(now: start.addingTimeInterval(129.9), leaseSeconds: 600, maxAgeSeconds: 10_000) == nil)
        #expect(try await other.claimNext(now: start.addingTimeInterval(130), leaseSeconds: 600, maxAgeSeconds: 10_000)?.id == "old")
    }

    /// Found from outside: 5,000 pending updates of one candidate behind one in flight made each
    /// claim read every sibling of every event it walked past (a second a claim, on the writer,
    /// with every 202 waiting). The "candidate busy" check goes through the partial index of
    /// busy events, and SQLite uses it only while the query repeats its `WHERE`: pinned here.
    @Test func theBusyCandidateCheckUsesItsPartialIndex() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let plan = try await outbox.pool.read { db in
            try Row.fetchAll(db, sql: """
                EXPLAIN QUERY PLAN SELECT id FROM events e
                WHERE account = 'default' AND state = 'pending' AND next_attempt_at <= 1 AND \(Outbox.keyIsFree)
                ORDER BY next_attempt_at, id LIMIT 1
                """, arguments: [1]).map { $0["detail"] as String }.joined(separator: "\n")
        }
        #expect(plan.contains("USING INDEX events_key_busy"), "\(plan)")
        // Still right: a candidate with one in flight holds its next event, not another's.
        let start = Date(timeIntervalSince1970: 2_000_000_000)
        for (id, partnerID) in [("k1", "X"), ("k2", "X"), ("o1", "Y")] {
            _ = try await outbox.accept(Self.submission(id, partnerID: partnerID, at: start), maxBacklog: 10)
        }
        #expect(try await outbox.claimNext(now: start, leaseSeconds: 600, maxAgeSeconds: 10_000)?.id == "k1")
        #expect(try await outbox.claimNext(now: start, leaseSeconds: 600, maxAgeSeconds: 10_000)?.id == "o1")
        #expect(try await outbox.claimNext(now: start, leaseSeconds: 600, maxAgeSeconds: 10_000) == nil)
    }

    /// Found from outside: `partner.timeout_seconds` lowered in the file (4 s to 0.5 s), then a
    /// crash with a request out: the restart applied 0.5 s and held the event 1 s, and the
    /// resend met the first request still at work at the partner (two candidates). The hold is
    /// twice the longer of the two runs' timeouts now; the next crash uses the new one alone.
    @Test func aCrashsHoldUsesTheTimeoutTheRequestWasSentUnder() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let start = Date(timeIntervalSince1970: 2_000_000_000)
        // The first run starts with a 4 s timeout: nothing to recover, its timeout recorded.
        #expect(try await outbox.recoverCrashedLeases(now: start, partnerTimeoutSeconds: 4).count == 0)
        _ = try await outbox.accept(Self.submission("out", at: start), maxBacklog: 10)
        _ = try #require(try await outbox.claimNext(now: start.addingTimeInterval(1), leaseSeconds: 600, maxAgeSeconds: 10_000))
        // It crashes; the restart runs with 0.5 s: held twice 4 s from the restart, not twice 0.5 s.
        let restart = start.addingTimeInterval(2)
        let recovered = try await outbox.recoverCrashedLeases(now: restart, partnerTimeoutSeconds: 0.5)
        #expect(recovered.count == 1)
        #expect(recovered.until == restart.addingTimeInterval(8))
        #expect(try await outbox.claimNext(now: restart.addingTimeInterval(7.9), leaseSeconds: 600, maxAgeSeconds: 10_000) == nil)
        let again = try #require(try await outbox.claimNext(now: restart.addingTimeInterval(8), leaseSeconds: 600, maxAgeSeconds: 10_000))
        #expect(again.id == "out")
        // Sent under 0.5 s this time; the next crash holds it twice that.
        let next = restart.addingTimeInterval(20)
        #expect(try await outbox.recoverCrashedLeases(now: next, partnerTimeoutSeconds: 0.5).until == next.addingTimeInterval(1))
    }

    /// Found from outside: after a timeout, another event of the same candidate was sent at once,
    /// while the partner might still be creating it from the request given up (two creates open
    /// together can both pass its 409 check). Every event of the candidate now waits as the
    /// event's own resend does: after a given-up answer (retry or dead), a shutdown's hand-back
    /// and a crash's recovery.
    @Test func anotherEventOfTheCandidateWaitsWhileARequestGivenUpMayStillBeAtThePartner() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let t = ManuallyTimed(outbox: outbox)
        try await t.accept([("first", "p1"), ("second", "p1"), ("other", "p2")], from: 0)
        let first = try #require(try await t.claimed(0))
        #expect(first.id == "first")
        // Timed out at 1 s with a 30 s timeout: the partner may work on it until 31 s.
        #expect(try await outbox.complete(first, outcome: .retry(at: t.at(31), status: nil, error: "timeout"), now: t.at(1), latencyMs: nil,
                                          partnerOpenUntil: t.at(31)))
        #expect(try await t.claim(2) == "other")  // another candidate is not held
        #expect(try await t.claim(3) == nil)
        #expect(try await outbox.nextDueAt(now: t.at(3)) == t.at(31))
        // At 31 s both are due: the older due first, the other waits for it in flight.
        #expect(try await t.claim(31) == "second")
        #expect(try await t.claim(31) == nil)

        // Given up for good (dead) after a reset: still open at the partner for the hold.
        try await t.accept([("dying", "p3"), ("after-dying", "p3")], from: 40)
        let dying = try #require(try await t.claimed(41))
        #expect(dying.id == "dying")
        #expect(try await outbox.complete(dying, outcome: .dead(status: nil, error: "connection_reset"), now: t.at(42), latencyMs: nil,
                                          partnerOpenUntil: t.at(72)))
        #expect(try await t.claim(71.9) == nil)
        // Nor does deleting settled records (a short record retention) end the hold: the row
        // holding it stays until it has passed (found from outside).
        #expect(try await outbox.prune(payloadBefore: .distantPast, recordBefore: t.at(71), includeDead: true, now: t.at(71)) == (0, 0))
        #expect(try await outbox.record(id: "dying") != nil)
        #expect(try await t.claim(71.9) == nil)
        #expect(try await t.claim(72) == "after-dying")
        #expect(try await outbox.prune(payloadBefore: .distantPast, recordBefore: t.at(72), includeDead: true, now: t.at(72)).1 >= 1)
        #expect(try await outbox.record(id: "dying") == nil)
    }

    /// `anotherEventOfTheCandidate...`, for a shutdown's hand-back and a crash's recovery.
    @Test func anotherEventOfTheCandidateWaitsForAHandBackOrACrashsRequest() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let t = ManuallyTimed(outbox: outbox)
        // Handed back at shutdown (resend at 130 s), and a crash's recovery (claimed at 101 s,
        // restarted at 105 s, held until 135 s): the same for their candidates' other events.
        try await t.accept([("cut", "p4"), ("after-cut", "p4"), ("crashed", "p5"), ("after-crash", "p5")], from: 99)
        let cut = try #require(try await t.claimed(100))
        #expect(cut.id == "cut")
        #expect(try await outbox.complete(cut, outcome: .interrupted(resendAt: t.at(130)), now: t.at(100), latencyMs: nil))
        // ("after-cut" is older, but its candidate is still open at the partner.)
        let crashed = try #require(try await t.claimed(101))
        #expect(crashed.id == "crashed")
        #expect(try await outbox.recoverLeases(expiredBefore: nil, now: t.at(105), holdSeconds: 30) == 1)
        #expect(try await t.claim(105) == nil)
        #expect(try await outbox.nextDueAt(now: t.at(105)) == t.at(130))
        // At 130 s the first window is over: the older event of that candidate goes first, and
        // the one handed back waits for it in flight; the other candidate's window lasts to 135 s.
        #expect(try await t.claim(130) == "after-cut")
        #expect(try await t.claim(130) == nil)
        #expect(try await t.claim(134.9) == nil)
        #expect(try await t.claim(135) == "after-crash")
    }

    /// An outbox read on a manual clock: `at(s)` is `s` seconds after a fixed start.
    struct ManuallyTimed {
        let outbox: Outbox
        let start = Date(timeIntervalSince1970: 1_000_000)
        func at(_ seconds: Double) -> Date { start.addingTimeInterval(seconds) }
        func claimed(_ seconds: Double) async throws -> ClaimedEvent? {
            try await outbox.claimNext(now: at(seconds), leaseSeconds: 600, maxAgeSeconds: 10_000)
        }
        func claim(_ seconds: Double) async throws -> String? { try await claimed(seconds)?.id }
        /// Accepts `(id, partner_candidate_id)` pairs a millisecond apart from `seconds`.
        func accept(_ events: [(String, String)], from seconds: Double) async throws {
            for (n, (id, partner)) in events.enumerated() {
                _ = try await outbox.accept(OutboxTests.submission(id, partnerID: partner, at: at(seconds + Double(n) * 0.001)), maxBacklog: 10)
            }
        }
    }

    /// Changed credentials make due the events retried after a refusal of the old ones, and
    /// only those: not another account's, not a retry for another reason, not an event handed
    /// back since (its hold waits for a request that may still be at the partner).
    @Test func releaseRefusedTakesOnlyTheRefusalsRetries() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let start = Date(timeIntervalSince1970: 1_000_000)
        let later = start.addingTimeInterval(3600)
        for (n, id) in ["refused", "refused-then-cut", "timeout", "other-account"].enumerated() {
            var submission = Self.submission(id, partnerID: id, at: start.addingTimeInterval(Double(n) * 0.001))
            if id == "other-account" { submission.account = "acme" }
            _ = try await outbox.accept(submission, maxBacklog: 10)
            let claimed = try #require(try await outbox.claimNext(accounts: ["default", "acme"], now: start.addingTimeInterval(1),
                                                                  leaseSeconds: 600, maxAgeSeconds: 100_000))
            #expect(claimed.id == id)
            let error = id == "timeout" ? "timeout" : "unauthorized"
            let at = id.hasPrefix("refused") ? later : later.addingTimeInterval(7200)
            #expect(try await outbox.complete(claimed, outcome: .retry(at: at, status: id == "timeout" ? nil : 401, error: error),
                                              now: start, latencyMs: 1))
        }
        // Claimed again at the hour, and handed back at shutdown with a hold of its own.
        let cut = try #require(try await outbox.claimNext(accounts: ["default", "acme"], now: later, leaseSeconds: 600, maxAgeSeconds: 100_000))
        #expect(cut.id == "refused")
        let again = try #require(try await outbox.claimNext(accounts: ["default", "acme"], now: later, leaseSeconds: 600, maxAgeSeconds: 100_000))
        #expect(again.id == "refused-then-cut")
        #expect(try await outbox.complete(cut, outcome: .retry(at: later.addingTimeInterval(3600), status: 401, error: "unauthorized"),
                                          now: later, latencyMs: 1))
        #expect(try await outbox.complete(again, outcome: .interrupted(resendAt: later.addingTimeInterval(30)), now: later, latencyMs: nil))
        let now = later.addingTimeInterval(1)
        #expect(try await outbox.releaseRefused(accounts: ["default"], now: now) == ["default": 1])
        #expect(try await outbox.claimNext(accounts: ["default", "acme"], now: now, leaseSeconds: 600, maxAgeSeconds: 100_000)?.id == "refused")
        #expect(try await outbox.claimNext(accounts: ["default", "acme"], now: now, leaseSeconds: 600, maxAgeSeconds: 100_000) == nil)
    }

    @Test func holdsAreKeptForTheNextStart() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let until = Date(timeIntervalSince1970: 2_000_000)
        outbox.saveHolds(["partner": until, "account:acme": until.addingTimeInterval(60)])
        outbox.saveHolds(["account:acme": until.addingTimeInterval(90)])  // the set in force replaces the one before
        try await outbox.recoverLeases(expiredBefore: nil, now: until)  // a write queued after them: they are done
        let reopened = try Outbox(path: dir.file("o.sqlite3"))
        #expect(try await reopened.loadHolds() == ["account:acme": until.addingTimeInterval(90)])
    }

    @Test func retryMovesDeadBackWithAFreshBudget() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let start = Date(timeIntervalSince1970: 1_000_000)
        _ = try await outbox.accept(Self.submission("e1", at: start), maxBacklog: 10)
        let claimed = try #require(try await outbox.claimNext(now: start, leaseSeconds: 60, maxAgeSeconds: 100))
        try await outbox.complete(claimed, outcome: .dead(status: 404, error: "position_not_found"), now: start, latencyMs: 3)
        let later = start.addingTimeInterval(1000)
        let result = try await outbox.retry(ids: ["e1", "nope"], now: later)
        #expect(result.retried == ["e1"])
        #expect(result.skipped == ["nope"])
        // Older than max_age since receipt, but the age budget restarted with the retry.
        let again = try #require(try await outbox.claimNext(now: later, leaseSeconds: 60, maxAgeSeconds: 100))
        #expect(again.attempt == 1)
        #expect(try await outbox.history(id: "e1").count == 1)
    }

    @Test func recoveredEventWithItsAttemptsUsedGoesDeadInsteadOfBeingSent() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let now = Date()
        _ = try await outbox.accept(Self.submission("e1", at: now), maxBacklog: 10)
        _ = try #require(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1000, maxAttempts: 1))
        // The daemon dies during its last attempt; the lease comes back at start-up.
        try await outbox.recoverLeases(expiredBefore: nil, now: now)
        let result = try await outbox.claimNextDue(now: now, leaseSeconds: 60, maxAgeSeconds: 1000, maxAttempts: 1)
        #expect(result.claimed == nil)
        #expect(result.expired.map(\.reason) == ["attempts_exhausted"])
        #expect(try await outbox.record(id: "e1")?.state == .dead)
    }

    /// Event `e1` (partner candidate id `X`) claimed, then `forget X` while its request is out,
    /// then `outcome` recorded; returns whether the outcome was recorded.
    static func completeAfterForget(_ outbox: Outbox, _ outcome: RecordedOutcome) async throws -> Bool {
        let now = Date()
        _ = try await outbox.accept(Self.submission("e1", partnerID: "X", at: now), maxBacklog: 10)
        let claimed = try #require(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1000))
        _ = try await outbox.forget(partnerCandidateID: "X", now: now)
        return try await outbox.complete(claimed, outcome: outcome, now: now, latencyMs: 1)
    }

    @Test func forgetDuringDeliveryKeepsThePartnersFullAnswerOut() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let outcome = RecordedOutcome.delivered(candidateUID: "u", status: 201, summary: "{}", fullResponse: Data("{\"first_name\":\"A\"}".utf8))
        #expect(try await Self.completeAfterForget(outbox, outcome))
        let full = try await outbox.pool.read { db in try Row.fetchOne(db, sql: "SELECT partner_response_full FROM events")?["partner_response_full"] as Data? }
        #expect(full == nil)
        #expect(try await outbox.record(id: "e1")?.state == .delivered)
    }

    /// `forget` while a request was out, then the partner refused it with a message that may
    /// quote the submitted email: only the code may be kept, in the record and in the history.
    @Test(arguments: [
        RecordedOutcome.dead(status: 400, error: "invalid_email: a@b.example is not valid"),
        .retry(at: Date(), status: 503, error: "http_503: upstream said a@b.example"),
        .linked(candidateUID: "u", status: 409, error: "candidate_post_conflict: a@b.example exists"),
    ])
    func forgetDuringAFailingAttemptKeepsOnlyTheCode(outcome: RecordedOutcome) async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        #expect(try await Self.completeAfterForget(outbox, outcome))
        let record = try #require(try await outbox.record(id: "e1"))
        #expect(record.lastError?.contains("@") == false)
        #expect(record.lastError?.contains(":") == false)
        #expect(try await outbox.history(id: "e1").allSatisfy { $0.error?.contains("@") != true })
    }

    /// Every event `forget` erased that is not delivered or linked ends dead `erased` (review:
    /// one forgotten while its request was out, then refused, or on its last attempt, and one
    /// already dead, kept their codes, and `events retry --all-dead` counted them among the
    /// events whose senders must send them again). One whose payload `purge` erased is counted.
    @Test func everyEventForgetErasedEndsDeadErasedAndIsNotCountedForResending() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let now = Date(timeIntervalSince1970: 2_000_000_000)
        func claim(_ id: String, _ partnerID: String) async throws -> ClaimedEvent {
            _ = try await outbox.accept(Self.submission(id, partnerID: partnerID, at: now), maxBacklog: 10)
            return try #require(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1000, maxAttempts: 1))
        }
        // Forgotten in flight, then refused for good.
        let refused = try await claim("refused", "A")
        _ = try await outbox.forget(partnerCandidateID: "A", now: now)
        #expect(try await outbox.complete(refused, outcome: .dead(status: 422, error: "invalid_email: x"), now: now, latencyMs: 1))
        // Forgotten in flight on its last attempt, then a retryable answer: dead at the next claim.
        let last = try await claim("last", "B")
        _ = try await outbox.forget(partnerCandidateID: "B", now: now)
        #expect(try await outbox.complete(last, outcome: .retry(at: now, status: 503, error: "http_503"), now: now, latencyMs: 1))
        #expect(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1000, maxAttempts: 1) == nil)
        // Dead first, forgotten after.
        let dead = try await claim("dead", "C")
        #expect(try await outbox.complete(dead, outcome: .dead(status: 404, error: "position_not_found"), now: now, latencyMs: 1))
        _ = try await outbox.forget(partnerCandidateID: "C", now: now)
        for id in ["refused", "last", "dead"] {
            let record = try #require(try await outbox.record(id: id))
            #expect(record.state == .dead && record.lastError == "erased", "\(id): \(record.state) \(record.lastError ?? "-")")
        }
        #expect(try await outbox.history(id: "dead").map(\.error) == ["position_not_found"])  // the history keeps why
        #expect(try await outbox.deadWithoutPayload() == 0)
        // A dead event whose payload `purge` erased cannot be resent: counted.
        let purged = try await claim("purged", "D")
        #expect(try await outbox.complete(purged, outcome: .dead(status: 404, error: "position_not_found"), now: now, latencyMs: 1))
        let later = now.addingTimeInterval(10)
        #expect(try await outbox.prune(payloadBefore: later, recordBefore: .distantPast, includeDead: true, now: later) == (1, 0))
        #expect(try await outbox.deadWithoutPayload() == 1)
    }

    /// A value a partner echoed as its error code, stored before codes were checked: the read
    /// API does not show it, and `forget` does not keep it (review).
    @Test func aStoredCodeThatIsNotACodeIsNeitherShownNorKept() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("e1", partnerID: "X"), maxBacklog: 10)
        try await outbox.pool.write { db in
            try db.execute(sql: "UPDATE events SET last_error = '987654321: the partner said so' WHERE id = 'e1'")
            try db.execute(sql: "INSERT INTO attempts (event_id, attempt, at, outcome, status, error) VALUES ('e1', 1, 1, 'retry', 400, '987654321: again')")
            // A word-shaped value, as the shape check alone let through (review): the same.
            try db.execute(sql: "INSERT INTO attempts (event_id, attempt, at, outcome, status, error) VALUES ('e1', 2, 2, 'retry', 503, 'lovelace')")
            // Codes that are codes stay.
            try db.execute(sql: "INSERT INTO attempts (event_id, attempt, at, outcome, status, error) VALUES ('e1', 3, 3, 'retry', 503, 'http_503')")
            try db.execute(sql: "INSERT INTO attempts (event_id, attempt, at, outcome, status, error) VALUES ('e1', 4, 4, 'retry', NULL, 'connection_reset')")
            try db.execute(sql: "INSERT INTO attempts (event_id, attempt, at, outcome, status, error) VALUES ('e1', 5, 5, 'dead', 400, 'invalid_email: m')")
        }
        let shown = try #require(try await outbox.record(id: "e1")).jsonObject(includeMessages: false)
        #expect(shown["last_error"] as? String == "partner_error")
        _ = try await outbox.forget(partnerCandidateID: "X", now: Date())
        #expect(try await outbox.record(id: "e1")?.lastError == "erased")
        #expect(try await outbox.history(id: "e1").map(\.error)
                == ["partner_error", "partner_error", "http_503", "connection_reset", "invalid_email"])
    }

    /// Every code the relay stores is shown as itself, not as `partner_error`.
    @Test func theRelaysOwnCodesAreShownAsThemselves() {
        for code in PartnerErrorBody.relayCodes.union(PartnerErrorBody.documentedCodes).union(["http_429", "http_503"]) {
            #expect(PartnerErrorBody.storedCode(code + ": a message") == code)
        }
        for text in ["http_5031", "http_", "http_abc", "lovelace: x", "attempts_exhaustedx"] {
            #expect(PartnerErrorBody.storedCode(text) == "partner_error", "\(text)")
        }
    }

    @Test func pendingPastMaxAgeGoesDeadInsteadOfBeingSent() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let start = Date(timeIntervalSince1970: 1_000_000)
        _ = try await outbox.accept(Self.submission("e1", at: start), maxBacklog: 10)
        #expect(try await outbox.claimNext(now: start.addingTimeInterval(101), leaseSeconds: 60, maxAgeSeconds: 100) == nil)
        let record = try #require(try await outbox.record(id: "e1"))
        #expect(record.state == .dead)
        #expect(record.lastError == "max_age_exceeded")
    }

    @Test func forgetErasesPayloadsAndStopsUndelivered() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("e1", body: #"{"first_name":"Ada"}"#, partnerID: "X"), maxBacklog: 10)
        let report = try await outbox.forget(partnerCandidateID: "X", now: Date())
        #expect(report == ForgetReport(events: ["e1"], pendingStopped: 1))
        let payload = try await outbox.pool.read { db in try Row.fetchOne(db, sql: "SELECT body FROM payloads WHERE event_id = 'e1'")?["body"] as Data? }
        #expect(payload == nil)
        #expect(try await outbox.record(id: "e1")?.lastError == "erased")
    }

    /// `forget` and the payload's retention leave an idempotency key only as its SHA-256 (a
    /// sender may build its keys from personal data; found from outside), and a replay of the
    /// erased event's webhook is still a duplicate: nothing is stored again.
    @Test func erasureLeavesAnIdempotencyKeyOnlyAsItsHash() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let start = Date(timeIntervalSince1970: 1_000_000)
        for (id, partnerID) in [("e1", "X"), ("e2", "Y"), ("e3", "Z")] {
            _ = try await outbox.accept(Self.submission(id, key: "cand-\(partnerID)-NID998877", body: "{\"\(id)\":1}", partnerID: partnerID, at: start),
                                        maxBacklog: 10)
        }
        let keys = { try await outbox.pool.read { db in try String?.fetchAll(db, sql: "SELECT idempotency_key FROM events ORDER BY id") } }
        _ = try await outbox.forget(partnerCandidateID: "X", now: start)
        let delivered = try #require(try await outbox.claimNextDue(accounts: [AccountConfiguration.defaultID], freshSince: nil, smallPayloadOnly: false, now: start,
                                                                   leaseSeconds: 60, maxAgeSeconds: 1_000, maxAttempts: 10).claimed)
        #expect(delivered.id == "e2")
        #expect(try await outbox.complete(delivered, outcome: .delivered(candidateUID: "u2", status: 201, summary: nil, fullResponse: nil),
                                          now: start, latencyMs: 5))
        _ = try await outbox.prune(payloadBefore: start.addingTimeInterval(1), recordBefore: start, includeDead: false,
                                   now: start.addingTimeInterval(2))
        #expect(try await keys() == [Outbox.erasedKey("cand-X-NID998877"), Outbox.erasedKey("cand-Y-NID998877"), "cand-Z-NID998877"])
        #expect(Outbox.erasedKey("cand-X-NID998877").hasPrefix(Outbox.erasedKeyPrefix) && !Outbox.erasedKey("cand-X-NID998877").contains("NID"))
        // SHA-256 of the key's UTF-8, as every erased key already stored was made (FIPS 180's "abc").
        #expect(Outbox.erasedKey("abc") == Outbox.erasedKeyPrefix + "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")

        // A replay of the forgotten webhook: the same event, nothing stored.
        let replay = try await outbox.accept(Self.submission("e4", key: "cand-X-NID998877", body: "{\"e1\":1}", partnerID: "X", at: start),
                                             maxBacklog: 10)
        guard case .duplicate(let record) = replay else {
            Issue.record("not a duplicate: \(replay)")
            return
        }
        #expect(record.id == "e1")
        // Erased again (a second forget): the key stays as it is.
        _ = try await outbox.forget(partnerCandidateID: "X", now: start)
        #expect(try await keys().first == Outbox.erasedKey("cand-X-NID998877"))
        #expect(try await outbox.record(id: "e4") == nil)

        // A sender's key that spells the hash (review): its own event, no false replay, and
        // erasing it breaks nothing (with a plain `sha256:` prefix the unique index refused the
        // erased key and `forget` failed).
        let spelled = "sha256:" + IngestHandler.hex(SHA256.hash(data: Data("cand-Z-NID998877".utf8)))
        let other = try await outbox.accept(Self.submission("e5", key: spelled, body: "{\"e5\":1}", partnerID: "W", at: start), maxBacklog: 10)
        guard case .created = other else {
            Issue.record("not created: \(other)")
            return
        }
        _ = try await outbox.forget(partnerCandidateID: "Z", now: start)
        _ = try await outbox.forget(partnerCandidateID: "W", now: start)
        #expect(Set(try await keys().compactMap { $0 }).count == 4)
    }

    /// Bodies on both sides of `PayloadStore.directLimit` (bound values, and blob I/O into a
    /// zeroblob) come back byte for byte, and every way of erasing one removes its row.
    @Test(arguments: [10, PayloadStore.directLimit, PayloadStore.directLimit + 1, 3_000_000])
    func payloadsOfEverySizeRoundTripAndAreErased(size: Int) async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        var generator = SystemRandomNumberGenerator()
        let body = Data((0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let start = Date(timeIntervalSince1970: 1_000_000)
        for (id, partnerID) in [("e1", "X"), ("e2", "Y"), ("e3", "Z")] {
            var submission = Self.submission(id, partnerID: partnerID, at: start)
            submission.payload = body
            _ = try await outbox.accept(submission, maxBacklog: 10)
        }
        let payloadCount = { try await outbox.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM payloads") } }
        #expect(try await payloadCount() == 3)
        let claimed = try #require(try await outbox.claimNext(now: start, leaseSeconds: 60, maxAgeSeconds: 1_000))
        #expect(claimed.id == "e1" && claimed.payload == body)
        // Recording the outcome leaves the payload as it was (it lives apart from the record).
        #expect(try await outbox.complete(claimed, outcome: .delivered(candidateUID: "u1", status: 201, summary: nil, fullResponse: nil),
                                          now: start, latencyMs: 5))
        let kept = try await outbox.pool.read { db in try Data.fetchOne(db, sql: "SELECT body FROM payloads WHERE event_id = 'e1'") }
        #expect(kept == body)
        // Erasure of one candidate, retention of delivered events, deletion of records.
        _ = try await outbox.forget(partnerCandidateID: "Y", now: start)
        #expect(try await outbox.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM payloads WHERE event_id = 'e2'") } == 0)
        let pruned = try await outbox.prune(payloadBefore: start.addingTimeInterval(1), recordBefore: start, includeDead: false,
                                            now: start.addingTimeInterval(2))
        #expect(pruned.erased == 1 && pruned.deleted == 0)
        #expect(try await payloadCount() == 1)
        _ = try await outbox.prune(payloadBefore: start, recordBefore: start.addingTimeInterval(10), includeDead: true,
                                   now: start.addingTimeInterval(11))
        #expect(try await outbox.record(id: "e2") == nil)
        // e3 is still pending: its payload stays, and it is sent as it came.
        #expect(try await payloadCount() == 1)
        let next = try #require(try await outbox.claimNext(now: start.addingTimeInterval(11), leaseSeconds: 60, maxAgeSeconds: 1_000))
        #expect(next.id == "e3" && next.payload == body)
    }

    /// A claim takes a large payload only while it fits in the payload memory, or alone when it
    /// is larger than all of it; until then the account waits (a small event behind it too) and
    /// the result says why.
    @Test func largePayloadsAreClaimedOnlyWhileTheyFitInThePayloadMemory() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: dir.file("o.sqlite3"), payloadMemory: PayloadMemory(budget: 250_000))
        let start = Date(timeIntervalSince1970: 1_000_000)
        for (index, size) in [100_000, 100_000, 100_000, 10, 300_000].enumerated() {
            var submission = Self.submission("e\(index + 1)", partnerID: "C\(index + 1)", at: start.addingTimeInterval(Double(index)))
            submission.payload = Data(repeating: 0x41, count: size)
            _ = try await outbox.accept(submission, maxBacklog: 10)
        }
        let now = start.addingTimeInterval(10)
        func claim() async throws -> ClaimResult {
            try await outbox.claimNextDue(now: now, leaseSeconds: 60, maxAgeSeconds: 1_000, maxAttempts: 10)
        }
        let first = try #require(try await claim().claimed)
        let second = try #require(try await claim().claimed)
        #expect([first.id, second.id] == ["e1", "e2"] && first.heldBytes == 100_000)
        let full = try await claim()
        #expect(full.claimed == nil && full.waitingForMemory)
        #expect(outbox.payloadMemory.heldBytes == 200_000)
        #expect(outbox.releasePayload(first))
        let third = try #require(try await claim().claimed)
        let small = try #require(try await claim().claimed)
        #expect(third.id == "e3" && small.id == "e4" && small.heldBytes == 0 && !outbox.releasePayload(small))
        // Larger than the whole budget: it waits for the others, then goes alone.
        let waiting = try await claim()
        #expect(waiting.claimed == nil && waiting.waitingForMemory)
        outbox.releasePayload(second)
        outbox.releasePayload(third)
        let alone = try #require(try await claim().claimed)
        #expect(alone.id == "e5" && outbox.payloadMemory.heldBytes == 300_000)
        outbox.releasePayload(alone)
        #expect(outbox.payloadMemory.heldBytes == 0)
    }

    /// A claim whose batch was rolled back runs again alone (`GroupCommit` retries each item):
    /// what its first run reserved is not held twice.
    @Test func aClaimRunAgainAfterARollbackHoldsItsPayloadOnce() async throws {
        struct Rollback: Error {}
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: dir.file("o.sqlite3"), payloadMemory: PayloadMemory(budget: 250_000))
        let start = Date(timeIntervalSince1970: 1_000_000)
        var submission = Self.submission("e1", partnerID: "C1", at: start)
        submission.payload = Data(repeating: 0x41, count: 100_000)
        _ = try await outbox.accept(submission, maxBacklog: 10)
        let request = ClaimRequest(accounts: ["default"], freshSince: nil, now: start.addingTimeInterval(1), leaseSeconds: 60,
                                   maxAgeSeconds: 1_000, maxAttempts: 10, memory: outbox.payloadMemory)
        await #expect(throws: Rollback.self) {
            try await outbox.pool.write { db in
                #expect(try Outbox.claimOne(db, request, quiet: outbox.quiet).claimed?.heldBytes == 100_000)
                throw Rollback()
            }
        }
        let claimed = try await outbox.pool.write { db in try Outbox.claimOne(db, request, quiet: outbox.quiet).claimed }
        #expect(claimed?.id == "e1" && claimed?.heldBytes == 100_000)
        #expect(outbox.payloadMemory.heldBytes == 100_000)
    }

    /// An erased body is gone from the file's bytes too, not only from its tables (SQLite
    /// keeps deleted content in freed pages unless secure_delete is on, which the outbox sets
    /// itself: some SQLite builds have it on by default, others not), small or large.
    @Test(arguments: [200, 300_000])
    func anErasedPayloadLeavesNoBytesInTheFile(size: Int) async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let marker = "NATIONAL-ID-7391-"
        let body = String(repeating: marker, count: size / marker.count)
        _ = try await outbox.accept(Self.submission("e1", body: body, partnerID: "X"), maxBacklog: 10)
        let fileHolds = { () throws -> Bool in
            try outbox.pool.writeWithoutTransaction { db in _ = try db.checkpoint(.truncate) }
            let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.file("o.sqlite3")))
            return bytes.range(of: Data(marker.utf8)) != nil
        }
        #expect(try await outbox.pool.write { db in try Int.fetchOne(db, sql: "PRAGMA secure_delete") } == 1)
        #expect(try await outbox.pool.read { db in try Int.fetchOne(db, sql: "PRAGMA secure_delete") } == 1)
        #expect(try fileHolds())
        _ = try await outbox.forget(partnerCandidateID: "X", now: Date())
        #expect(try fileHolds() == false)
    }

    /// A claim ahead (`smallPayloadOnly`, by a worker whose request is out) leaves an event with
    /// a large payload for a free worker.
    @Test func aClaimAheadLeavesLargePayloads() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let start = Date(timeIntervalSince1970: 1_000_000)
        var large = Self.submission("e1", partnerID: "L", at: start)
        large.payload = Data(repeating: 0x61, count: PayloadStore.directLimit + 1)
        _ = try await outbox.accept(large, maxBacklog: 10)
        let ahead = try await outbox.claimNextDue(smallPayloadOnly: true, now: start, leaseSeconds: 60, maxAgeSeconds: 1_000, maxAttempts: 5)
        #expect(ahead.claimed == nil)
        #expect(try await outbox.record(id: "e1")?.state == .pending)
        let free = try await outbox.claimNextDue(now: start, leaseSeconds: 60, maxAgeSeconds: 1_000, maxAttempts: 5)
        #expect(free.claimed?.payload == large.payload)
    }

    @Test func replayIsAnsweredEvenWhenTheBacklogIsFull() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission(key: "k", body: "a"), maxBacklog: 1)
        guard case .duplicate = try await outbox.accept(Self.submission(key: "k", body: "a"), maxBacklog: 1) else {
            Issue.record("replay refused")
            return
        }
    }

    /// One commit's batch, in arrival order: a key seen earlier in the same transaction is a
    /// replay (or, with another body, refused); no key is never one; a forgotten event's key
    /// (stored only as its hash) is a replay too, with its own body only.
    @Test func aBatchFindsKeysStoredEarlierInItsOwnTransaction() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let start = Date(timeIntervalSince1970: 1_000_000)
        _ = try await outbox.accept(Self.submission("e0", key: "gone", body: "g", partnerID: "F", at: start), maxBacklog: 100)
        _ = try await outbox.forget(partnerCandidateID: "F", now: start)
        let batch = [
            Self.submission("e1", key: "k", body: "a"), Self.submission("e2", key: "k", body: "a"),
            Self.submission("e3", key: "k", body: "b"), Self.submission("e4", body: "a"), Self.submission("e5", body: "a"),
            Self.submission("e6", key: "gone", body: "g"), Self.submission("e7", key: "gone", body: "h"),
            Self.submission("e8", key: "k2", body: "a"),
        ].map { PendingAccept(submission: $0, maxBacklog: 100) }
        let results = try await Self.commitBatch(outbox, batch)
        #expect(results == ["created e1", "duplicate of e1", "reused e1", "created e4", "created e5",
                            "duplicate of e0", "reused e0", "created e8"])
        let stored = try await outbox.pool.read { db in try String.fetchAll(db, sql: "SELECT id FROM events ORDER BY id") }
        #expect(stored == ["e0", "e1", "e4", "e5", "e8"])
        let payloads = try await outbox.pool.read { db in try String.fetchAll(db, sql: "SELECT event_id FROM payloads ORDER BY event_id") }
        #expect(payloads == ["e1", "e4", "e5", "e8"])

        // A full backlog: replays (the erased key's too) are answered, another body refused,
        // a new event not stored.
        let full = [
            Self.submission("e9", key: "gone", body: "g"), Self.submission("e10", key: "gone", body: "h"),
            Self.submission("e11", key: "k", body: "b"), Self.submission("e12", key: "k3", body: "a"),
        ].map { PendingAccept(submission: $0, maxBacklog: 1) }
        let answers = try await Self.commitBatch(outbox, full)
        #expect(answers == ["duplicate of e0", "reused e0", "reused e1", "backlog full"])
    }

    /// One group commit's transaction of `batch`, each item's result said in a few words.
    static func commitBatch(_ outbox: Outbox, _ batch: [PendingAccept]) async throws -> [String] {
        let outcome = await withCheckedContinuation { continuation in
            outbox.acceptBatch(batch) { continuation.resume(returning: $0) }
        }
        return try outcome.get().map { result -> String in
            switch result {
            case .success(.created(let record)): "created \(record.id)"
            case .success(.duplicate(let record)): "duplicate of \(record.id)"
            case .failure(OutboxError.idempotencyKeyReused(let existing)): "reused \(existing)"
            case .failure(OutboxError.backlogFull): "backlog full"
            case .failure(let error): "\(error)"
            }
        }
    }

    /// The insert skips a row for any constraint it breaks (`OR IGNORE`); one skipped for
    /// another reason than its key (here an id already used) fails, never reported stored.
    @Test func aRowSkippedForAnotherConstraintFails() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("e1", body: "a"), maxBacklog: 10)
        for key in [nil, "new-key"] as [String?] {
            do {
                let result = try await outbox.accept(Self.submission("e1", key: key, body: "b"), maxBacklog: 10)
                Issue.record("answered \(result)")
            } catch OutboxError.storage {}
        }
        #expect(try await outbox.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM events") } == 1)
    }

    /// The accept's insert skips a replay of an erased key by making `body_sha256` NULL: the
    /// column must refuse NULL in the schema every migration leaves.
    @Test func theBodyDigestColumnRefusesNull() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let notNull = try await outbox.pool.read { db in
            try Bool.fetchOne(db, sql: "SELECT \"notnull\" FROM pragma_table_info('events') WHERE name = 'body_sha256'")
        }
        #expect(notNull == true)
    }

    /// A replay is answered while its account is being removed (closed); a new event is not stored.
    @Test func replayIsAnsweredWhileTheAccountIsClosed() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("e1", key: "k", body: "a"), maxBacklog: 10)
        _ = try await outbox.closeAccounts([AccountConfiguration.defaultID])
        guard case .duplicate(let record) = try await outbox.accept(Self.submission("e2", key: "k", body: "a"), maxBacklog: 10) else {
            Issue.record("replay refused")
            return
        }
        #expect(record.id == "e1")
        do {
            _ = try await outbox.accept(Self.submission("e3", key: "k3", body: "a"), maxBacklog: 10)
            Issue.record("stored for a closed account")
        } catch OutboxError.accountClosed {}
        do {
            _ = try await outbox.accept(Self.submission("e4", key: "k", body: "b"), maxBacklog: 10)
            Issue.record("another body accepted")
        } catch OutboxError.idempotencyKeyReused(let existing) {
            #expect(existing == "e1")
        }
        #expect(try await outbox.status(now: Date()).counts[.pending] == 1)
    }

    @Test func erasureKeepsOnlyErrorCodes() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        let now = Date()
        _ = try await outbox.accept(Self.submission("e1", partnerID: "X", at: now), maxBacklog: 10)
        let claimed = try #require(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1000))
        try await outbox.complete(claimed, outcome: .dead(status: 400, error: "invalid_email: zelda@ is not an email"), now: now, latencyMs: 1)
        _ = try await outbox.forget(partnerCandidateID: "X", now: now)
        // The record says it was erased (no count asks for it to be sent again); the history keeps the code.
        #expect(try await outbox.record(id: "e1")?.lastError == "erased")
        #expect(try await outbox.history(id: "e1").map(\.error) == ["invalid_email"])
    }

    @Test func backupIsAConsistentCopy() async throws {
        let (dir, outbox) = try Self.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("e1"), maxBacklog: 10)
        try outbox.backup(to: dir.file("copy.sqlite3"))
        let copy = try Outbox(path: dir.file("copy.sqlite3"))
        #expect(try await copy.record(id: "e1") != nil)
        #expect(throws: OutboxError.self) { try outbox.backup(to: dir.file("copy.sqlite3")) }
        // The live outbox's own path: refused for the path given, not for its "-wal".
        let refusal = #expect(throws: OutboxError.self) { try outbox.backup(to: outbox.path) }
        #expect(refusal?.description == "storage: \(outbox.path) already exists", "\(String(describing: refusal))")
        // Another database's side file by that name: refused, and left as it was (a failed
        // copy once deleted -wal and -shm it had not written).
        try dir.write("other.sqlite3-wal", "not ours")
        #expect(throws: OutboxError.self) { try outbox.backup(to: dir.file("other.sqlite3")) }
        #expect(!FileManager.default.fileExists(atPath: dir.file("other.sqlite3")))
        #expect(try String(contentsOfFile: dir.file("other.sqlite3-wal"), encoding: .utf8) == "not ours")
    }
}
