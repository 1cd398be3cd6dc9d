import Foundation

/// Misbehaviour the simulator injects into `POST /candidates` (and the OAuth endpoint), so the
/// relay's retry, re-authentication and dead-letter paths can be exercised on demand.
///
/// Decoding is lenient: any key left out of a `PUT /_sim/faults` body keeps its default, so an
/// operator can send `{"failNext": 2}` without restating every other knob.
public struct SimulatorFaults: Sendable, Codable, Equatable {
    /// Probability (0...1) of answering `injectStatus` instead of handling the request.
    public var errorRate: Double = 0
    /// Status used by `errorRate` and `failNext`.
    public var injectStatus: Int = 503
    /// The next N create requests answer `injectStatus`; counts down as they are used.
    public var failNext: Int = 0
    /// When set, sent as `Retry-After` on injected or rate-limit 429/503 answers, and on the
    /// token endpoint's 503 (`tokenEndpointDown`).
    public var retryAfter: String? = nil
    /// Delay added before answering, in milliseconds.
    public var latencyMs: Int = 0
    /// Per api-key (the JWT `iss`) delays that replace `latencyMs` for that key's requests (a
    /// partner slow for some customers only). Cleared or stopped, a waiting request goes on.
    public var latencyMsByAPIKey: [String: Int] = [:]
    /// Probability (0...1) of closing the connection without answering.
    public var closeRate: Double = 0
    /// A bearer first seen more than this many seconds ago is refused with 401 `unauthorized`
    /// (a token that "expires early", independent of its `exp`).
    public var tokenMaxAgeSeconds: Double? = nil
    /// Every bearer is refused with 401 `unauthorized`.
    public var rejectAllTokens: Bool = false
    /// The OAuth token endpoint answers 503.
    public var tokenEndpointDown: Bool = false
    /// Answers to `POST /candidates` send their head and first body byte, then hold the rest of
    /// the body this long (a partner that stalls after the headers).
    public var stallBodyMs: Int = 0
    /// Delay before the OAuth token endpoint answers (a stalling token endpoint).
    public var tokenLatencyMs: Int = 0
    /// When set, `failNext` and `errorRate` apply only to requests whose JWT `iss` is this
    /// api-key (one customer's trouble); the others are answered normally.
    public var injectOnlyForAPIKey: String? = nil

    /// No faults: the simulator behaves like a healthy partner.
    public init() {}

    /// Every knob, each defaulting to "no fault".
    public init(
        errorRate: Double = 0,
        injectStatus: Int = 503,
        failNext: Int = 0,
        retryAfter: String? = nil,
        latencyMs: Int = 0,
        closeRate: Double = 0,
        tokenMaxAgeSeconds: Double? = nil,
        rejectAllTokens: Bool = false,
        tokenEndpointDown: Bool = false,
        stallBodyMs: Int = 0,
        tokenLatencyMs: Int = 0,
        injectOnlyForAPIKey: String? = nil,
        latencyMsByAPIKey: [String: Int] = [:]
    ) {
        self.errorRate = errorRate
        self.injectStatus = injectStatus
        self.failNext = failNext
        self.retryAfter = retryAfter
        self.latencyMs = latencyMs
        self.closeRate = closeRate
        self.tokenMaxAgeSeconds = tokenMaxAgeSeconds
        self.rejectAllTokens = rejectAllTokens
        self.tokenEndpointDown = tokenEndpointDown
        self.stallBodyMs = stallBodyMs
        self.tokenLatencyMs = tokenLatencyMs
        self.injectOnlyForAPIKey = injectOnlyForAPIKey
        self.latencyMsByAPIKey = latencyMsByAPIKey
    }

    private enum CodingKeys: String, CodingKey {
        case errorRate, injectStatus, failNext, retryAfter, latencyMs, closeRate
        case tokenMaxAgeSeconds, rejectAllTokens, tokenEndpointDown, stallBodyMs, tokenLatencyMs, injectOnlyForAPIKey, latencyMsByAPIKey
    }

    /// Decodes a partial document: absent keys keep their defaults.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = SimulatorFaults()
        self.errorRate = try container.decodeIfPresent(Double.self, forKey: .errorRate) ?? defaults.errorRate
        self.injectStatus = try container.decodeIfPresent(Int.self, forKey: .injectStatus) ?? defaults.injectStatus
        self.failNext = try container.decodeIfPresent(Int.self, forKey: .failNext) ?? defaults.failNext
        self.retryAfter = try container.decodeIfPresent(String.self, forKey: .retryAfter)
        self.latencyMs = try container.decodeIfPresent(Int.self, forKey: .latencyMs) ?? defaults.latencyMs
        self.closeRate = try container.decodeIfPresent(Double.self, forKey: .closeRate) ?? defaults.closeRate
        self.tokenMaxAgeSeconds = try container.decodeIfPresent(Double.self, forKey: .tokenMaxAgeSeconds)
        self.rejectAllTokens =
            try container.decodeIfPresent(Bool.self, forKey: .rejectAllTokens) ?? defaults.rejectAllTokens
        self.tokenEndpointDown =
            try container.decodeIfPresent(Bool.self, forKey: .tokenEndpointDown) ?? defaults.tokenEndpointDown
        self.stallBodyMs = try container.decodeIfPresent(Int.self, forKey: .stallBodyMs) ?? defaults.stallBodyMs
        self.tokenLatencyMs = try container.decodeIfPresent(Int.self, forKey: .tokenLatencyMs) ?? defaults.tokenLatencyMs
        self.injectOnlyForAPIKey = try container.decodeIfPresent(String.self, forKey: .injectOnlyForAPIKey)
        self.latencyMsByAPIKey = try container.decodeIfPresent([String: Int].self, forKey: .latencyMsByAPIKey) ?? defaults.latencyMsByAPIKey
    }
}
