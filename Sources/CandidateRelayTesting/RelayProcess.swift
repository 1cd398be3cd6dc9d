import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The real `candidate-relay` binary run as a child process, its stdout captured line by line.
public final class RelayProcess: Sendable {
    public let process: Process
    private let output = TextBuffer()
    private let outputPipe = Pipe()

    /// The binary SwiftPM built next to the tests (`.build/debug/candidate-relay`).
    public static func binaryPath(file: String = #filePath) -> String {
        var url = URL(fileURLWithPath: file)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { break }
        }
        for candidate in [".build/debug/candidate-relay", ".build/x86_64-unknown-linux-gnu/debug/candidate-relay",
                          ".build/aarch64-unknown-linux-gnu/debug/candidate-relay"] {
            let path = url.appendingPathComponent(candidate).path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return url.appendingPathComponent(".build/debug/candidate-relay").path
    }

    /// - Parameter fileLimit: the open-files limit (soft and hard) to run the binary under.
    public init(arguments: [String], environment: [String: String] = [:], fileLimit: Int? = nil) throws {
        process = Process()
        if let fileLimit {
            // The shell sets the limit and is replaced by the binary (same pid).
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "ulimit -n \(fileLimit) && exec \"$0\" \"$@\"", Self.binaryPath()] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: Self.binaryPath())
            process.arguments = arguments
        }
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("CANDIDATE_RELAY_") && $0.key != "NOTIFY_SOCKET" }
        env.merge(environment) { $1 }
        process.environment = env
        let pipe = outputPipe
        process.standardOutput = pipe
        process.standardError = pipe
        pipe.fileHandleForReading.readabilityHandler = { [output] handle in
            let data = handle.availableData
            if data.isEmpty {
                output.end()
                handle.readabilityHandler = nil
            } else {
                output.append(String(decoding: data, as: UTF8.self))
            }
        }
        try process.run()
    }

    /// Stops reading the process's output and closes it, as a log shipper that exits does: what
    /// the process writes from then on fails (EPIPE) and is no longer in `text`.
    public func closeOutput() {
        output.end()
        outputPipe.fileHandleForReading.readabilityHandler = nil
        try? outputPipe.fileHandleForReading.close()
    }

    /// Everything the process printed so far.
    public var text: String { output.text }

    /// Parsed JSON log lines.
    public var logEvents: [[String: Any]] {
        text.split(separator: "\n").compactMap { line in
            try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        }
    }

    public func events(_ name: String) -> [[String: Any]] {
        logEvents.filter { $0["event"] as? String == name }
    }

    /// Waits for the `relay.started` line and returns the port it listens on.
    public func waitUntilReady(timeout: Double = 30) async throws -> Int {
        let ready = await eventually(timeout: timeout) { !self.events("relay.started").isEmpty || !self.process.isRunning }
        guard ready, let listen = events("relay.started").first?["listen"] as? String,
              let port = listen.split(separator: ":").last.flatMap({ Int($0) }) else {
            throw ProcessFailure(message: "relay did not start; output:\n\(text)")
        }
        return port
    }

    public func signal(_ signal: Int32) {
        kill(process.processIdentifier, signal)
    }

    /// Waits for exit; returns the exit status (or the signal number for an uncaught signal).
    @discardableResult
    public func waitForExit(timeout: Double = 30) async -> Int32? {
        let exited = await eventually(timeout: timeout) { !self.process.isRunning }
        if !exited {
            signal(SIGKILL)
            return nil
        }
        // What it wrote last is read on another thread: `text` has it once the pipe's end is
        // read (found in a loaded run: the exit came first, and `text` was still empty).
        _ = await eventually(timeout: 2) { self.output.ended }
        return process.terminationStatus
    }

    public struct ProcessFailure: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }
}

/// Runs the binary to completion (admin commands); returns exit status and output.
public func runRelay(_ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, output: String) {
    let process = try RelayProcess(arguments: arguments, environment: environment)
    let status = await process.waitForExit(timeout: 60) ?? -1
    try? await Task.sleep(for: .milliseconds(20))
    return (status, process.text)
}

/// Text appended from a reader thread, read from tests.
final class TextBuffer: Sendable {
    private let storage = Mutex<String>("")
    private let endSeen = Mutex(false)
    func append(_ text: String) { storage.withLock { $0 += text } }
    var text: String { storage.withLock { $0 } }
    /// The output reached its end (everything the process wrote is in `text`), or was closed.
    func end() { endSeen.withLock { $0 = true } }
    var ended: Bool { endSeen.withLock { $0 } }
}
