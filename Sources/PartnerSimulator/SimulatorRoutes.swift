import Foundation
import Hummingbird
import Logging

/// The simulator's HTTP surface: the partner endpoints plus `/_sim/*` inspection and control,
/// which a real partner does not have and which clients under test must never call.
struct SimulatorRoutes: Sendable {
    let configuration: PartnerSimulatorConfiguration
    let store: SimulatorStore
    let logger: Logger

    func register(on router: Router<SimulatorRequestContext>) {
        let verifier = HS256TokenVerifier(apiKeys: configuration.apiKeys, secret: configuration.secret)
        let candidates = CandidateEndpoint(
            configuration: configuration,
            store: store,
            authenticator: BearerAuthenticator(verifier: verifier, store: store),
            logger: logger
        )
        let oauth = OAuthTokenEndpoint(configuration: configuration, store: store)
        let store = self.store

        router.post("candidates") { request, context in
            try await candidates.handle(request, context: context)
        }
        router.post("oauth/token") { request, _ in
            try await oauth.handle(request)
        }
        router.get("_sim/state") { _, _ in
            SimulatorResponse.encoded(store.snapshot())
        }
        router.get("_sim/faults") { _, _ in
            SimulatorResponse.encoded(store.faults)
        }
        router.put("_sim/faults") { request, context in
            var request = request
            let body = try await request.collectBody(upTo: 64 * 1024)
            do {
                let faults = try JSONDecoder().decode(SimulatorFaults.self, from: Data(body.readableBytesView))
                store.setFaults(faults)
                return SimulatorResponse.encoded(faults)
            } catch {
                return SimulatorResponse.json(
                    status: 400, object: ["error": "invalid_faults", "message": "\(error)"])
            }
        }
    }
}
