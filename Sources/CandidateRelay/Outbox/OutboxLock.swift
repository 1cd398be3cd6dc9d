import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One daemon per outbox file: an exclusive `flock` on `<outbox>.lock` and on the database file
/// itself, held for the life of the process. The kernel drops them when the process dies, so a
/// crash never leaves a stale lock (unlike a PID file). Admin commands do not take them: they
/// share the database through SQLite (whose locks are `fcntl` ones, which `flock` leaves alone
/// on a local filesystem).
public final class OutboxLock: Sendable {
    private let fd: Int32
    /// The database file's: a deleted `.lock` (a cleaner, an `rm` of leftovers) let a second
    /// daemon start on the same outbox, take the first one's leases back and send its in-flight
    /// events again; and a hard link, which no path resolution reveals, is the same file.
    private let databaseFD: Int32
    public let path: String

    /// A failed call's error: `.full` when the filesystem has no room (`ENOSPC`, `EDQUOT`).
    static func failure(_ code: Int32, _ what: String) -> OutboxError {
        let message = "\(what): \(String(cString: strerror(code)))"
        return code == ENOSPC || code == EDQUOT ? .full(message) : .storage(message)
    }

    public struct AlreadyLocked: Error, CustomStringConvertible {
        public let path: String
        public var description: String {
            "another candidate-relay daemon is already serving this outbox (lock \(path) is held); stop it first"
        }
    }

    public init(outboxPath: String) throws {
        try Outbox.ensureDirectory(for: outboxPath)
        path = Self.lockPath(for: outboxPath)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Self.failure(errno, "cannot open lock file \(path)") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let busy = errno == EWOULDBLOCK
            close(fd)
            if busy { throw AlreadyLocked(path: path) }
            throw OutboxError.storage("cannot lock \(path)")
        }
        let database = Self.canonicalPath(outboxPath)
        let databaseFD = open(database, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard databaseFD >= 0 else {
            let failure = Self.failure(errno, "cannot open \(database)")
            close(fd)
            throw failure
        }
        guard flock(databaseFD, LOCK_EX | LOCK_NB) == 0 else {
            let busy = errno == EWOULDBLOCK
            close(databaseFD)
            close(fd)
            if busy { throw AlreadyLocked(path: database) }
            throw OutboxError.storage("cannot lock \(database)")
        }
        self.fd = fd
        self.databaseFD = databaseFD
        recordHolder()
    }

    /// Writes the holder's pid into the lock file, for `candidate-relay reload` (the lock, not
    /// this number, is the truth). On a full disk the write fails: a start that waited for space
    /// calls this again once it is back (found from outside: the file stayed empty for the
    /// daemon's whole life, and `reload` without `--pid` found no daemon).
    public func recordHolder() {
        let text = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    /// The pid of the daemon holding the lock of `outboxPath`, nil when no process holds it.
    public static func holder(outboxPath: String) -> Int32? {
        let path = lockPath(for: outboxPath)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // If we can take it, nobody holds it.
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return nil
        }
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return nil }
        return Int32(String(decoding: buffer[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Whether a daemon holds the outbox (its database file's lock: there even when the `.lock`
    /// file was deleted).
    public static func isHeld(outboxPath: String) -> Bool {
        let fd = open(canonicalPath(outboxPath), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return false
        }
        return errno == EWOULDBLOCK
    }

    /// `<outbox>.lock` beside the file the path leads to (`canonicalPath`): a second path to the
    /// same outbox finds the same lock.
    static func lockPath(for outboxPath: String) -> String {
        canonicalPath(outboxPath) + ".lock"
    }

    /// The file a path to the outbox leads to: symlinks resolved, in the path's directories and
    /// in its last part, even when that part is a symlink to a file not created yet (the first
    /// start). The lock, the reload report and the file's creation all go by it. (A hard link
    /// is another name for the same file that no path resolution reveals.)
    public static func canonicalPath(_ outboxPath: String) -> String {
        if let resolved = realPath(outboxPath) { return resolved }
        var path = outboxPath
        for _ in 0..<40 {
            var info = stat()
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK else { break }
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let count = readlink(path, &buffer, Int(PATH_MAX))
            guard count > 0 else { break }
            let target = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            path = target.hasPrefix("/") ? target : (path as NSString).deletingLastPathComponent + "/" + target
        }
        let directory = (path as NSString).deletingLastPathComponent
        guard let resolved = realPath(directory.isEmpty ? "." : directory) else { return path }
        return resolved + "/" + (path as NSString).lastPathComponent
    }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    deinit {
        flock(databaseFD, LOCK_UN)
        close(databaseFD)
        flock(fd, LOCK_UN)
        close(fd)
    }
}
