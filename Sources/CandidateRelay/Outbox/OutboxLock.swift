import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One daemon per outbox file: an exclusive `flock` on `<outbox>.lock`, held for the life of the
/// process. The kernel drops it when the process dies, so a crash never leaves a stale lock
/// (unlike a PID file). Admin commands do not take it: they share the database through SQLite.
public final class OutboxLock: Sendable {
    private let fd: Int32
    public let path: String

    public struct AlreadyLocked: Error, CustomStringConvertible {
        public let path: String
        public var description: String {
            "another candidate-relay daemon is already serving this outbox (lock \(path) is held); stop it first"
        }
    }

    public init(outboxPath: String) throws {
        path = outboxPath + ".lock"
        try Outbox.ensureDirectory(for: outboxPath)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw OutboxError.storage("cannot open lock file \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let busy = errno == EWOULDBLOCK
            close(fd)
            if busy { throw AlreadyLocked(path: path) }
            throw OutboxError.storage("cannot lock \(path)")
        }
        self.fd = fd
        // The holder's pid, for `candidate-relay reload` (the lock, not this number, is the truth).
        let text = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    /// The pid of the daemon holding the lock of `outboxPath`, nil when no process holds it.
    public static func holder(outboxPath: String) -> Int32? {
        let path = outboxPath + ".lock"
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

    deinit {
        flock(fd, LOCK_UN)
        close(fd)
    }
}
