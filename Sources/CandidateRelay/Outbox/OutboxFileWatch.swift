import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Notices the outbox's file or its `-wal` deleted or replaced while the daemon has them open.
/// SQLite goes on writing to the open files, so every 202 after an `rm` went to a file no
/// restart would read, and `/readyz` said ready. Found from outside.
final class OutboxFileWatch: Sendable {
    private struct Identity: Sendable {
        var path: String
        var device: UInt64
        var inode: UInt64
    }
    private struct State {
        /// The database file first, then the others (`record`'s order).
        var opened: [Identity] = []
        var problem: String?
        var problemIsDatabaseFile = false
    }
    private let state = Mutex(State())

    /// Remembers what `paths` are now (after the outbox is open: its WAL exists then); the
    /// database file's path first.
    func record(_ paths: [String]) {
        let identities = paths.compactMap { path -> Identity? in
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            return Identity(path: path, device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        }
        state.withLock { $0.opened = identities }
    }

    /// Whether the last problem seen is the database file's (not the -wal's or the -shm's).
    var problemIsDatabaseFile: Bool { state.withLock { $0.problemIsDatabaseFile } }

    /// Nil while every file is the one opened (again: a file moved away and back is the same
    /// file); else the problem. `found` runs when a problem is seen after none was, with
    /// whether it is the database file's.
    func problem(found: (String, Bool) -> Void = { _, _ in }) -> String? {
        let (problem, isDatabase, isNew) = state.withLock { state -> (String?, Bool, Bool) in
            var current: String?
            var isDatabase = false
            for (index, file) in state.opened.enumerated() {
                var info = stat()
                let looked = stat(file.path, &info) == 0
                let code = errno
                if looked && UInt64(info.st_dev) == file.device && UInt64(info.st_ino) == file.inode { continue }
                // Found from outside: a directory made unreadable (`chmod 000`) was said to be a
                // deleted file, sending the operator to restore files that were all there.
                current = looked || code == ENOENT || code == ENOTDIR
                    ? "\(file.path) was \(looked ? "replaced" : "deleted") while open: what is written now reaches no file a restart reads"
                    : "\(file.path) cannot be looked up (\(String(cString: strerror(code)))): a restart could not open it either; check the permissions of the file and its directories"
                isDatabase = index == 0
                break
            }
            defer { (state.problem, state.problemIsDatabaseFile) = (current, isDatabase) }
            return (current, isDatabase, current != nil && state.problem == nil)
        }
        if let problem, isNew { found(problem, isDatabase) }
        return problem
    }
}
