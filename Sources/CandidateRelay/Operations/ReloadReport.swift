import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's answer to a SIGHUP, for `candidate-relay reload` (what `systemctl reload` runs):
/// a small JSON file next to the outbox, `<outbox>.reload`, replaced atomically after each
/// reload is applied or refused. A signal carries no answer, and systemd 252 ends a reload job
/// as soon as `kill -HUP` returns; with this file the command returns only once the new
/// configuration is live, and fails with the reason when it was refused.
public struct ReloadReport: Codable, Sendable, Equatable {
    /// The daemon that wrote it (a report of an earlier run never answers this one's reload).
    public var pid: Int32
    /// Reloads handled by this process so far; 0 at start-up.
    public var generation: Int
    public var ok: Bool
    /// Why the new configuration was refused (one problem per line), empty when applied.
    public var problems: [String]
    /// Changed keys that apply only after a restart (the rest is live); nil from a daemon that
    /// predates it.
    public var restartNeeded: [String]?
    public var at: String

    public init(pid: Int32, generation: Int, ok: Bool, problems: [String], restartNeeded: [String] = [], at: Date) {
        self.pid = pid
        self.generation = generation
        self.ok = ok
        self.problems = problems
        self.restartNeeded = restartNeeded
        self.at = Timestamp.string(at)
    }

    /// Beside the file the outbox path leads to, as the lock is: a daemon and a `reload` that
    /// name the outbox by different paths (a symlink) meet at the same report.
    public static func path(outboxPath: String) -> String { OutboxLock.canonicalPath(outboxPath) + ".reload" }

    /// Writes the report (temporary file, then rename: a reader never sees half of it).
    public func write(outboxPath: String) throws {
        let path = Self.path(outboxPath: outboxPath)
        let temporary = path + ".tmp"
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(self)
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw OutboxError.storage("cannot write \(temporary)")
        }
        guard rename(temporary, path) == 0 else { throw OutboxError.storage("cannot rename \(temporary)") }
    }

    public static func read(outboxPath: String) -> ReloadReport? {
        guard let data = FileManager.default.contents(atPath: path(outboxPath: outboxPath)) else { return nil }
        return try? JSONDecoder().decode(ReloadReport.self, from: data)
    }
}

/// `candidate-relay reload`: SIGHUP to the daemon serving the outbox, then wait for its report.
public enum ReloadCommand {
    public enum Outcome: Equatable, Sendable {
        /// Live, except the keys named, which wait for a restart.
        case applied(restartNeeded: [String])
        case refused([String])
        case noDaemon(String)
        /// The daemon lives but no report came: why it may be, in words.
        case noAnswer(String)
    }

    /// - Parameters:
    ///   - pid: the daemon (systemd's `$MAINPID`); nil reads it from the outbox's lock file.
    public static func run(outboxPath configuredPath: String, pid: Int32?, timeoutSeconds: Double) async -> Outcome {
        guard let target = pid ?? OutboxLock.holder(outboxPath: configuredPath) else {
            return .noDaemon("no daemon holds \(OutboxLock.lockPath(for: configuredPath)); is candidate-relay running with this config?")
        }
        // The daemon answers beside the outbox it runs on. A new `storage.path` in the file
        // waits for a restart, so the daemon named by pid answers beside its old one: found
        // through the lock it holds (the command waited at the new path and reported a hung
        // daemon, failing `systemctl reload`).
        // A pid that holds no outbox is not signalled: SIGHUP ends most other processes (a
        // mistyped or stale pid, run as root).
        let outboxPath: String
        if OutboxLock.holder(outboxPath: configuredPath) == target {
            outboxPath = configuredPath
        } else if let held = Self.outboxHeld(by: target, configuredPath: configuredPath) {
            outboxPath = held
        } else {
            return .noDaemon("process \(target) holds no candidate-relay outbox (\(OutboxLock.lockPath(for: configuredPath)) is not its); not signalled")
        }
        let before = ReloadReport.read(outboxPath: outboxPath).flatMap { $0.pid == target ? $0.generation : nil } ?? 0
        guard kill(target, SIGHUP) == 0 else {
            return .noDaemon("cannot signal process \(target): \(String(cString: strerror(errno)))")
        }
        let deadline = ContinuousClock.now + .milliseconds(Int(timeoutSeconds * 1000))
        while ContinuousClock.now < deadline {
            if let report = ReloadReport.read(outboxPath: outboxPath), report.pid == target, report.generation > before {
                return report.ok ? .applied(restartNeeded: report.restartNeeded ?? []) : .refused(report.problems)
            }
            // A daemon that died meanwhile never answers: said at once, not after the timeout
            // (gone, or a zombie its parent has not reaped yet).
            if (kill(target, 0) != 0 && errno == ESRCH) || Self.isZombie(target) {
                return .noDaemon("process \(target) exited before it answered")
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return .noAnswer(Self.noAnswerReason(pid: target, reportPath: ReloadReport.path(outboxPath: outboxPath)))
    }

    /// A daemon that handled the SIGHUP but could not write its report (a full disk, a state
    /// directory it may no longer write) looks hung to this command: said as a possibility,
    /// with the filesystem's free space when it is gone (found from outside: a reload applied
    /// on a full disk was reported as "the daemon did not answer", the words for a hung daemon).
    static func noAnswerReason(pid: Int32, reportPath: String) -> String {
        let directory = (reportPath as NSString).deletingLastPathComponent
        var full = ""
        var fs = statvfs()
        if statvfs(directory.isEmpty ? "." : directory, &fs) == 0, UInt64(fs.f_bavail) * UInt64(fs.f_frsize) < 64 << 10 {
            full = "; the filesystem of \(directory) is full"
        }
        return "process \(pid) is running but wrote no answer to \(reportPath)\(full): it may be hung, or it may have handled the "
            + "reload and been unable to write the answer (a full disk, a state directory it cannot write); its log says what it did "
            + "(config.reloaded, config.reload_rejected, storage.failed)"
    }

    /// The outbox `pid` runs on, read from the process's open files (Linux's `/proc/<pid>/fd`:
    /// the same user as the daemon, or root, as systemd's `ExecReload` is): the configured one
    /// when it holds that file open and locked (its `.lock` may have been deleted, which the
    /// daemon survives), else the one whose `.lock` it holds (`storage.path` edited since).
    static func outboxHeld(by pid: Int32, configuredPath: String) -> String? {
        let directory = "/proc/\(pid)/fd"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return nil }
        let links = entries.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/" + $0) }
        if links.contains(OutboxLock.canonicalPath(configuredPath)), OutboxLock.isHeld(outboxPath: configuredPath) { return configuredPath }
        for link in links where link.hasSuffix(".lock") {
            let outbox = String(link.dropLast(".lock".count))
            if OutboxLock.holder(outboxPath: outbox) == pid { return outbox }
        }
        return nil
    }

    /// Whether `pid` has exited and waits to be reaped (`/proc/<pid>/stat` state `Z`).
    static func isZombie(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first == "Z"
    }
}
