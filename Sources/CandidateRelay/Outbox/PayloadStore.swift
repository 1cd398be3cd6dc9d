import Foundation
import GRDB
import GRDBSQLite

/// The `payloads` table: each event's stored body, apart from its record (`v4_payloads`).
///
/// Apart, because SQLite rewrites a whole row on every UPDATE: with the payload in `events`,
/// each claim and each outcome read a 20 MB candidate into memory and wrote it back, twice per
/// delivery. Large bodies also bypass SQLite's own copies: they are written with incremental
/// blob I/O into a `zeroblob` (no bound copy, no in-memory record) and read the same way into
/// the one `Data` the partner request is sent from. Small ones take the ordinary path, which is
/// faster for them (opening a blob handle compiles a statement).
enum PayloadStore {
    /// Bodies up to this size are bound and fetched as values; larger ones use blob I/O.
    static let directLimit = 64 * 1024

    static func insert(_ db: Database, eventID: String, body: Data) throws {
        guard body.count > directLimit else {
            try db.cachedStatement(sql: "INSERT INTO payloads (event_id, body) VALUES (?, ?)").execute(arguments: [eventID, body])
            return
        }
        try db.cachedStatement(sql: "INSERT INTO payloads (event_id, body) VALUES (?, zeroblob(?))").execute(arguments: [eventID, body.count])
        let blob = try openBlob(db, rowID: db.lastInsertedRowID, writable: true)
        defer { sqlite3_blob_close(blob) }
        let rc = body.withUnsafeBytes { bytes in
            sqlite3_blob_write(blob, bytes.baseAddress, Int32(bytes.count), 0)
        }
        guard rc == SQLITE_OK else { throw DatabaseError(resultCode: ResultCode(rawValue: rc), message: "payload write failed") }
    }

    /// What `read` found.
    enum Stored {
        case body(Data)
        case erased
        /// Over `directLimit`, and the caller asked for small bodies only or had no room for it
        /// (nothing was read).
        case large
    }

    /// The event's payload, or that it was erased; with `smallOnly`, or when `admitLarge` says
    /// no to its size, a large one is not read.
    static func read(_ db: Database, eventID: String, smallOnly: Bool = false,
                     admitLarge: (Int) -> Bool = { _ in true }) throws -> Stored {
        guard let row = try Row.fetchOne(
            db.cachedStatement(sql: """
                SELECT rowid, length(body) AS size, CASE WHEN length(body) <= ? THEN body END AS body
                FROM payloads WHERE event_id = ?
                """),
            arguments: [directLimit, eventID]) else { return .erased }
        if let body = row["body"] as Data? { return .body(body) }
        let size: Int = row["size"]
        if smallOnly || !admitLarge(size) { return .large }
        let blob = try openBlob(db, rowID: row["rowid"], writable: false)
        defer { sqlite3_blob_close(blob) }
        var body = Data(count: size)
        let rc = body.withUnsafeMutableBytes { bytes in
            sqlite3_blob_read(blob, bytes.baseAddress, Int32(size), 0)
        }
        guard rc == SQLITE_OK else { throw DatabaseError(resultCode: ResultCode(rawValue: rc), message: "payload read failed") }
        return .body(body)
    }

    /// SQL: the row of `events` in the statement still has its payload.
    static let exists = "EXISTS (SELECT 1 FROM payloads p WHERE p.event_id = events.id)"

    /// Erases the payloads of the events matching `condition` (a WHERE clause on `events`).
    /// (`Outbox` turns `secure_delete` on, so the bytes are overwritten, not only unlinked.)
    static func erase(_ db: Database, eventsWhere condition: String, arguments: StatementArguments) throws {
        try db.execute(sql: "DELETE FROM payloads WHERE event_id IN (SELECT id FROM events WHERE \(condition))", arguments: arguments)
    }

    private static func openBlob(_ db: Database, rowID: Int64, writable: Bool) throws -> OpaquePointer {
        var blob: OpaquePointer?
        let rc = sqlite3_blob_open(db.sqliteConnection, "main", "payloads", "body", rowID, writable ? 1 : 0, &blob)
        guard rc == SQLITE_OK, let blob else {
            if let blob { sqlite3_blob_close(blob) }
            throw DatabaseError(resultCode: ResultCode(rawValue: rc), message: "cannot open the payload blob")
        }
        return blob
    }
}
