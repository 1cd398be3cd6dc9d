import CandidateRelay
import Foundation
import Synchronization

/// A temporary directory per test, removed by `cleanup()`.
public struct TemporaryDirectory: Sendable {
    public let path: String

    public init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("cr-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    public func write(_ name: String, _ content: String) throws {
        try content.write(toFile: file(name), atomically: true, encoding: .utf8)
    }

    public func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

/// Captures log lines in memory so tests can assert events and scan for personal data.
public final class LogCapture: Sendable {
    private let lines = Mutex<[String]>([])
    public init() {}
    public var output: LogOutput { LogOutput { line in self.lines.withLock { $0.append(line) } } }
    public var all: [String] { lines.withLock { $0 } }
    public var text: String { all.joined() }

    /// Parsed JSON lines whose `event` is `name`.
    public func events(_ name: String) -> [[String: Any]] {
        all.compactMap { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return object["event"] as? String == name ? object : nil
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes (waiting for a signal, not sleeping a guess).
public func eventually(timeout: Double = 20, interval: Double = 0.02, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .seconds(interval))
    }
    return try await condition()
}
