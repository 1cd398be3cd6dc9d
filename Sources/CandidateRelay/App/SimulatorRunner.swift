import Foundation
import PartnerSimulator
import UnixSignals

/// `candidate-relay partner-sim`: runs the simulator in the foreground until SIGINT/SIGTERM.
public enum SimulatorRunner {
    public static func run(_ configuration: PartnerSimulatorConfiguration, print: @Sendable (String) -> Void) async throws {
        let simulator = PartnerSimulator(configuration: configuration)
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let port = try await simulator.start()
        print("partner-sim listening on http://\(configuration.host):\(port) (api keys \(configuration.apiKeys.joined(separator: ", ")); rate limit per \(configuration.rateLimitScope.rawValue)); inspect: GET /_sim/state, change faults: PUT /_sim/faults")
        for await _ in signals { break }
        await simulator.stop()
    }
}
