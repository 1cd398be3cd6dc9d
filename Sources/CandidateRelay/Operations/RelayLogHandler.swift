import Foundation
import Logging
import Synchronization

/// Live logging settings, changed by SIGHUP without restarting.
public final class LogSettings: Sendable {
    private let state: Mutex<(Logger.Level, LoggingConfiguration.Format)>
    public init(level: Logger.Level, format: LoggingConfiguration.Format) {
        state = Mutex((level, format))
    }
    public var level: Logger.Level { state.withLock { $0.0 } }
    public var format: LoggingConfiguration.Format { state.withLock { $0.1 } }
    public func update(level: Logger.Level, format: LoggingConfiguration.Format) {
        state.withLock { $0 = (level, format) }
    }
}

/// Writes one line per log event to an output (stdout for journald): JSON or logfmt, with
/// `ts level event msg` first and the context fields after.
public struct RelayLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    let label: String
    let settings: LogSettings
    let output: LogOutput

    /// The log of a start that has no application yet (why it failed, a wait for disk space).
    public static func startLogger(_ settings: LogSettings) -> Logger {
        var logger = Logger(label: "relay") { RelayLogHandler(label: $0, settings: settings) }
        logger.logLevel = .trace
        return logger
    }

    public init(label: String, settings: LogSettings, output: LogOutput = .standardOutput) {
        self.label = label
        self.settings = settings
        self.output = output
    }

    public var logLevel: Logger.Level {
        get { settings.level }
        set {}
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        let name = fields.removeValue(forKey: "event").map { "\($0)" } ?? label
        let ts = Timestamp.string(Date())
        let line: String
        switch settings.format {
        case .json:
            // ts, level, event, msg first (what a person scanning journalctl reads), then context sorted.
            var parts = [("ts", ts as Any), ("level", event.level.rawValue as Any), ("event", name as Any), ("msg", "\(event.message)" as Any)]
            for key in fields.keys.sorted() { parts.append((key, Self.jsonValue(fields[key]!))) }
            line = "{" + parts.map { Self.fragment($0.0) + ":" + Self.fragment($0.1) }.joined(separator: ",") + "}"
        case .logfmt:
            var parts = ["ts=\(ts)", "level=\(event.level.rawValue)", "event=\(name)", "msg=\(Self.quoted("\(event.message)"))"]
            for key in fields.keys.sorted() { parts.append("\(key)=\(Self.quoted("\(fields[key]!)"))") }
            line = parts.joined(separator: " ")
        }
        output.write(line + "\n")
    }

    static func jsonValue(_ value: Logger.Metadata.Value) -> Any {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let c):
            if let i = c as? Int { return i }
            if let d = c as? Double { return d }
            if let seconds = c as? LogSeconds { return seconds }
            return "\(c)"
        case .array(let a): return a.map(jsonValue)
        case .dictionary(let d): return d.mapValues(jsonValue)
        }
    }

    /// One JSON value (string, number, array...) as text. Strings and numbers, nearly every
    /// field, are written directly: a log line per request must not cost a serializer run per
    /// field.
    static func fragment(_ value: Any) -> String {
        switch value {
        case let string as String: return ContractJSON.quoted(string)
        case let int as Int: return String(int)
        case let seconds as LogSeconds: return seconds.description
        case let double as Double where double.isFinite:
            return JSONValue.number(double).jsonText
        default:
            guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .withoutEscapingSlashes]) else {
                return "null"
            }
            return String(decoding: data, as: UTF8.self)
        }
    }

    /// A logfmt value: bare when it is plain, else quoted with `\\`, `\"`, `\n`, `\r`, `\t` and
    /// `\uXXXX` escapes for every other character no output carries raw (`ContractJSON.mustEscape`:
    /// C0, DEL, C1, line separators, bidi controls), so that a value from a request can neither
    /// forge a line nor reach a terminal as an escape.
    static func quoted(_ text: String) -> String {
        func needsEscape(_ scalar: Unicode.Scalar) -> Bool { ContractJSON.mustEscape(scalar.value) }
        let plain = !text.isEmpty && !text.unicodeScalars.contains {
            $0 == " " || $0 == "\"" || $0 == "=" || $0 == "\\" || needsEscape($0)
        }
        if plain { return text }
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": result += "\\\\"
            case "\"": result += "\\\""
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where needsEscape(scalar):
                // JSON's `\uXXXX` (a UTF-16 pair past U+FFFF), which logfmt readers decode (go-logfmt,
                // Loki's `| logfmt`). Found from outside: Swift's `\u{85}` failed Loki's parser, and
                // the line lost its fields; one such line breaks a metric query over the stream.
                for unit in String(scalar).utf16 {
                    let hex = String(unit, radix: 16)
                    result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                }
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}

/// Where log lines go: stdout (whole lines, in order) or a capture for tests.
public final class LogOutput: Sendable {
    private let sink: @Sendable (String) -> Void
    private let drain: @Sendable (Double) -> Bool
    public init(_ sink: @escaping @Sendable (String) -> Void) {
        self.sink = sink
        self.drain = { _ in true }
    }
    private init(sink: @escaping @Sendable (String) -> Void, drain: @escaping @Sendable (Double) -> Bool) {
        self.sink = sink
        self.drain = drain
    }
    public func write(_ line: String) { sink(line) }

    /// Waits until every line written so far has reached its descriptor (or was dropped), as
    /// long as the reader takes some every `timeoutSeconds`: false (the lines left counted as
    /// dropped, and said on stderr) when it took none for that long.
    @discardableResult
    public func flush(timeoutSeconds: Double = 2) -> Bool { drain(timeoutSeconds) }

    public static let standardOutput: LogOutput = {
        let output = LogOutput.descriptor(STDOUT_FILENO)
        // Every exit (`serve`'s end, a start that failed, an admin command) waits for the lines
        // still queued while their reader reads (found from outside: a fixed 2 s cut a slow
        // reader's log short, `relay.stopped` and all, without a word); systemd's stop timeout
        // is the bound. A reader that reads nothing for 2 s costs the lines left, counted.
        atexit { LogOutput.standardOutput.flush(timeoutSeconds: 2) }
        return output
    }()

    /// Lines a descriptor refused (its reader gone, its disk full), or that found the queue
    /// full behind a reader that stopped reading, in this process: dropped, never a crash or a
    /// stall. `/metrics` shows them (`candidate_relay_log_lines_dropped_total`), and the first
    /// one is said once on stderr, in case that still goes somewhere.
    public static var droppedLines: Int { dropped.load(ordering: .relaxed) }
    private static let dropped = Atomic<Int>(0)

    static func countDropped(_ lines: Int, reason: String) {
        if dropped.add(lines, ordering: .relaxed).oldValue == 0 {
            StandardStream.write("candidate-relay: log lines are being dropped: \(reason)\n", to: STDERR_FILENO)
        }
    }

    /// The most bytes of lines waiting for a reader that stopped reading; past it, lines are
    /// dropped (a stalled journald or a shipper applying back-pressure).
    public static let queueCapacityBytes = 4 << 20

    /// Lines written to `descriptor` (stdout for the daemon; a pipe in tests) by a thread of
    /// their own, so that a reader that stops reading (a full pipe) delays only that thread.
    /// Found from outside: the write blocked on the event loops and the workers under one lock,
    /// and a stdout nobody read froze ingest, `/healthz`, delivery, the watchdog and SIGTERM.
    public static func descriptor(_ descriptor: Int32, queueCapacityBytes: Int = LogOutput.queueCapacityBytes) -> LogOutput {
        let writer = LineWriter(descriptor: descriptor, capacityBytes: queueCapacityBytes)
        return LogOutput(sink: { writer.enqueue($0) }, drain: { writer.flush(timeoutSeconds: $0) })
    }
}

/// A queue of whole lines and the thread that writes them, in order, to one descriptor.
final class LineWriter: @unchecked Sendable {
    private let descriptor: Int32
    private let capacityBytes: Int
    /// Guards everything below.
    private let condition = NSCondition()
    private var queue: [String] = []
    private var queuedBytes = 0
    private var writing = false

    /// Chunks written so far: a flush waits while this moves.
    private var progress = 0
    /// The lines of the batch being written, not yet written.
    private var inFlightLines = 0
    /// The most bytes (whole lines) given to one `write`, so that a reader that is slow but
    /// reads shows progress, and an exit that gives up tears at most the chunk in progress.
    static let chunkBytes = 64 << 10

    init(descriptor: Int32, capacityBytes: Int) {
        self.descriptor = descriptor
        self.capacityBytes = capacityBytes
        let thread = Thread { [self] in run() }
        thread.name = "log-writer"
        thread.start()
    }

    func enqueue(_ line: String) {
        condition.lock()
        let size = line.utf8.count
        guard queuedBytes + size <= capacityBytes else {
            condition.unlock()
            LogOutput.countDropped(1, reason: "their output is not being read (\(capacityBytes >> 10) KiB of lines waiting)")
            return
        }
        queue.append(line)
        queuedBytes += size
        condition.signal()
        condition.unlock()
    }

    func flush(timeoutSeconds: Double) -> Bool {
        condition.lock()
        var seen = progress
        var deadline = Date().addingTimeInterval(timeoutSeconds)
        while !queue.isEmpty || writing {
            if progress != seen {
                seen = progress
                deadline = Date().addingTimeInterval(timeoutSeconds)
            }
            if !condition.wait(until: deadline), progress == seen, !queue.isEmpty || writing {
                let left = queue.count + inFlightLines
                condition.unlock()
                LogOutput.countDropped(left, reason: "their output took nothing for \(RelayConfiguration.number(timeoutSeconds)) s")
                StandardStream.write("candidate-relay: \(left) log line(s) not written: their output took nothing for "
                                     + "\(RelayConfiguration.number(timeoutSeconds)) s\n", to: STDERR_FILENO)
                return false
            }
        }
        condition.unlock()
        return true
    }

    private func run() {
        while true {
            condition.lock()
            while queue.isEmpty { condition.wait() }
            let batch = queue
            queue.removeAll(keepingCapacity: true)
            queuedBytes = 0
            writing = true
            inFlightLines = batch.count
            condition.unlock()
            // What piled up, in writes of up to `chunkBytes` of whole lines: fewer system calls
            // under load, and progress a flush can see.
            var start = 0
            while start < batch.count {
                var end = start
                var bytes = 0
                while end < batch.count, end == start || bytes + batch[end].utf8.count <= Self.chunkBytes {
                    bytes += batch[end].utf8.count
                    end += 1
                }
                if !StandardStream.write(batch[start..<end].joined(), to: descriptor) {
                    LogOutput.countDropped(end - start, reason: "their output refused a write (\(String(cString: strerror(errno))))")
                }
                condition.lock()
                inFlightLines -= end - start
                progress += 1
                condition.broadcast()
                condition.unlock()
                start = end
            }
            condition.lock()
            writing = false
            condition.broadcast()
            condition.unlock()
        }
    }
}
