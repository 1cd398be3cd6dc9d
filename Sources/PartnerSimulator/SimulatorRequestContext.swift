import Hummingbird

/// Request context that can drop the underlying connection, which the `closeRate` fault needs:
/// Hummingbird turns a thrown error into a 500, but a flaky partner sends nothing at all.
struct SimulatorRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    /// Closes the connection without writing an answer; returns once it is closed.
    let closeConnection: @Sendable () async -> Void

    init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        let channel = source.channel
        self.closeConnection = { try? await channel.close().get() }
    }

    /// Candidate bodies carry base64 files (up to 6 MB each, decoded), so allow more than
    /// Hummingbird's 2 MB default.
    var maxUploadSize: Int { 64 * 1024 * 1024 }
}
