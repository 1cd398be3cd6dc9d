import ServiceLifecycle

/// Hands the heaps' free memory back to the kernel every `interval` seconds
/// (`MallocTuning.trim`): what a crowd of slow or idle connections held goes back once they
/// close, instead of staying with the process at its high-water mark.
public struct MemoryTrimmer: Service {
    let interval: Double

    public init(interval: Double = 10) {
        self.interval = interval
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await gracefulSleep(seconds: interval)
            MallocTuning.trim()
        }
    }
}
