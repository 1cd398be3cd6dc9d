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
        var opened: [Identity] = []
        var problem: String?
    }
    private let state = Mutex(State())

    /// Remembers what `paths` are now (after the outbox is open: its WAL exists then).
    func record(_ paths: [String]) {
        let identities = paths.compactMap { path -> Identity? in
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            return Identity(path: path, device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        }
        state.withLock { $0.opened = identities }
    }

    /// Nil while every file is the one opened (again: a file moved away and back is the same
    /// file); else the problem. `found` runs when a problem is seen after none was.
    func problem(found: (String) -> Void = { _ in }) -> String? {
        let (problem, isNew) = state.withLock { state -> (String?, Bool) in
            var current: String?
            for file in state.opened {
                var info = stat()
                if stat(file.path, &info) != 0 || UInt64(info.st_dev) != file.device || UInt64(info.st_ino) != file.inode {
                    current = "\(file.path) was deleted or replaced while open: what is written now reaches no file a restart reads"
                    break
                }
            }
            defer { state.problem = current }
            return (current, current != nil && state.problem == nil)
        }
        if let problem, isNew { found(problem) }
        return problem
    }
}
