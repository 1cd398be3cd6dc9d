import Synchronization

/// A value that SIGHUP may replace while readers use it: a snapshot is read per use.
public final class Live<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    public init(_ value: Value) { storage = Mutex(value) }
    public var value: Value { storage.withLock { $0 } }
    public func set(_ value: Value) { storage.withLock { $0 = value } }
}

/// Whether the relay is shutting down: `/readyz` answers 503 and ingest refuses new events.
public final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public var isStopping: Bool { flag.load(ordering: .acquiring) }
    public func stop() { flag.store(true, ordering: .releasing) }
}
