import CandidateRelayTesting
import Foundation
import Testing
import Yams
@testable import CandidateRelay

@Suite struct ConfigurationTests {
    /// A config directory with the default secret files present.
    static func fixture(_ yaml: String, secrets: Bool = true) throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory()
        try dir.write("config.yaml", yaml.replacingOccurrences(of: "$DIR", with: dir.path))
        if secrets {
            try dir.write("comeet-api-key", "  key-123\n")
            try dir.write("comeet-secret", "s3cr3t-value\n")
            try dir.write("inbound-secrets", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
        }
        return dir
    }

    static func load(_ dir: TemporaryDirectory, env: [String: String] = [:]) async throws -> RelayConfiguration {
        try await ConfigurationLoader(configPath: dir.file("config.yaml"), environment: env).load()
    }

    static func problems(_ dir: TemporaryDirectory, env: [String: String] = [:]) async -> [String] {
        do {
            _ = try await load(dir, env: env)
            return []
        } catch let error as ConfigurationError {
            return error.problems.map(\.description)
        } catch {
            return ["unexpected \(error)"]
        }
    }

    /// Found from outside: an empty variable (a blank line of an EnvironmentFile) set the key's
    /// default over the file's value; a secrets file of several CRLF lines was one secret; a
    /// base URL with a query, a fragment or credentials passed; `0x10` seconds were 16.
    @Test func anEmptyVariableSetsNothingCRLFSecretsSplitTheBaseURLIsPlainAndSecondsDecimal() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            partner: { base_url: "http://127.0.0.1:1/sandbox/", auth: { api_key_file: comeet-api-key } }
            delivery: { workers: 7 }
            """)
        defer { dir.cleanup() }
        let second = "whsec_" + Data(repeating: 3, count: 24).base64EncodedString()
        try dir.write("inbound-secrets", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\r\n\(second)\r\n")
        let config = try await Self.load(dir, env: ["CANDIDATE_RELAY_PARTNER_BASE_URL": "", "CANDIDATE_RELAY_DELIVERY_WORKERS": " "])
        #expect(config.partner.baseURL == "http://127.0.0.1:1/sandbox/")
        #expect(config.delivery.workers == 7)
        #expect(config.ingest.signingSecrets.map(\.value) == ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", second])

        for url in ["http://127.0.0.1:1/api?x=1", "http://127.0.0.1:1/api/#frag", "http://user:pw@127.0.0.1:1/"] {
            #expect(await Self.problems(dir, env: ["CANDIDATE_RELAY_PARTNER_BASE_URL": url])
                == ["partner.base_url: must be an http(s) URL without query, fragment or credentials"])
        }
        // Seconds are decimal: Swift's Double reads hexadecimal too.
        #expect(await Self.problems(dir, env: ["CANDIDATE_RELAY_PARTNER_TIMEOUT_SECONDS": "0x10"])
            == ["partner.timeout_seconds: expected a number, got \"0x10\""])
        #expect(try await Self.load(dir, env: ["CANDIDATE_RELAY_PARTNER_TIMEOUT_SECONDS": "1.5e1"]).partner.timeoutSeconds == 15)
    }

    @Test func mapsEveryKeyFromYAML() async throws {
        let dir = try Self.fixture("""
            listen: { host: 0.0.0.0, port: 9000 }
            ingest: { max_body_bytes: 2048, max_backlog: 10, allow_unauthenticated: false }
            storage: { path: $DIR/state/outbox.sqlite3, payload_retention_days: 1.5, record_retention_days: 30 }
            partner:
              base_url: http://127.0.0.1:1
              timeout_seconds: 0.5
              auth: { mode: comeet_jwt, token_ttl_seconds: 300 }
              rate_limit: { requests: 10, per_seconds: 1 }
            delivery:
              workers: 2
              backoff: { initial_seconds: 0.05, multiplier: 3, max_seconds: 1 }
              max_attempts: 4
              max_age_seconds: 100
              shutdown_grace_seconds: 0.05
              circuit_breaker: { failures: 2, cooldown_seconds: 0.5 }
            logging: { level: debug, format: logfmt, heartbeat_seconds: 5 }
            """)
        defer { dir.cleanup() }
        let config = try await Self.load(dir)
        #expect(config.listen == ListenConfiguration(host: "0.0.0.0", port: 9000))
        #expect(config.ingest.maxBodyBytes == 2048)
        #expect(config.ingest.maxBacklog == 10)
        #expect(config.ingest.signingSecrets.count == 1)
        #expect(config.storage == StorageConfiguration(path: dir.file("state/outbox.sqlite3"), payloadRetentionDays: 1.5, recordRetentionDays: 30))
        #expect(config.partner.timeoutSeconds == 0.5)
        #expect(config.partner.rateLimit == RateLimitConfiguration(requests: 10, perSeconds: 1))
        guard case .comeetJWT(let apiKey, let secret, let ttl) = config.partner.auth else {
            Issue.record("wrong auth mode")
            return
        }
        #expect(apiKey.value == "key-123")
        #expect(secret.value == "s3cr3t-value")
        #expect(ttl == 300)
        #expect(config.delivery.workers == 2)
        #expect(config.delivery.backoff == BackoffConfiguration(initialSeconds: 0.05, multiplier: 3, maxSeconds: 1))
        #expect(config.delivery.maxAttempts == 4)
        #expect(config.delivery.circuitBreaker == CircuitBreakerConfiguration(failures: 2, cooldownSeconds: 0.5))
        #expect(config.logging == LoggingConfiguration(level: .debug, format: .logfmt, heartbeatSeconds: 5))
    }

    @Test func environmentOverridesTheFile() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\ndelivery: { workers: 2 }\n")
        defer { dir.cleanup() }
        let config = try await Self.load(dir, env: [
            "CANDIDATE_RELAY_DELIVERY_WORKERS": "7",
            "CANDIDATE_RELAY_DELIVERY_BACKOFF_INITIAL_SECONDS": "0.05",
            "CANDIDATE_RELAY_PARTNER_AUTH_SECRET": "from-env",
        ])
        #expect(config.delivery.workers == 7)
        #expect(config.delivery.backoff.initialSeconds == 0.05)
        guard case .comeetJWT(_, let secret, _) = config.partner.auth else { return }
        #expect(secret.value == "from-env")
    }

    @Test func secretsResolveInTheCredentialsDirectoryFirst() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\n")
        defer { dir.cleanup() }
        let creds = try TemporaryDirectory()
        defer { creds.cleanup() }
        try creds.write("comeet-api-key", "cred-key")
        try creds.write("comeet-secret", "cred-secret")
        try creds.write("inbound-secrets", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nwhsec_" + Data(repeating: 1, count: 24).base64EncodedString() + "\n")
        let config = try await Self.load(dir, env: ["CREDENTIALS_DIRECTORY": creds.path])
        guard case .comeetJWT(let apiKey, _, _) = config.partner.auth else { return }
        #expect(apiKey.value == "cred-key")
        #expect(config.ingest.signingSecrets.count == 2)
    }

    @Test func reportsEveryProblemAtOnce() async throws {
        let dir = try Self.fixture("""
            listen: { port: 70000 }
            storage: { path: $DIR/o.sqlite3 }
            delivery: { workers: four, max_attempts: 0 }
            logging: { level: loud }
            partner: { rate_limit: { requests: 100, per_seconds: 60 }, colour: blue }
            """)
        defer { dir.cleanup() }
        let rest = await Self.problems(dir)
        #expect(rest.contains("partner.colour: unknown key"))
        #expect(rest.contains("delivery.workers: expected an integer, got \"four\""))
        #expect(rest.contains("logging.level: must be one of trace|debug|info|notice|warning|error|critical, got \"loud\""))
        #expect(rest.contains("listen.port: must be 0...65535"))
        #expect(rest.contains("delivery.max_attempts: must be >= 1"))
    }

    @Test func missingSecretFileIsAProblemNamingThePath() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\n", secrets: false)
        defer { dir.cleanup() }
        let problems = await Self.problems(dir)
        #expect(problems.contains("partner.auth.secret_file: secret file \(dir.file("comeet-secret")) does not exist (next to the config file: CREDENTIALS_DIRECTORY is not set)"))
        #expect(problems.contains("ingest.signing_secrets_file: secret file \(dir.file("inbound-secrets")) does not exist (next to the config file: CREDENTIALS_DIRECTORY is not set)"))
        // The file's problem says it: not also "no inbound authentication ... allow_unauthenticated"
        // (found from outside, running the README's check-config from a shell).
        #expect(!problems.contains { $0.contains("no inbound authentication") })
        // Looked for in CREDENTIALS_DIRECTORY: no hint.
        let inCredentials = await Self.problems(dir, env: ["CREDENTIALS_DIRECTORY": dir.file("creds")])
        #expect(inCredentials.contains("ingest.signing_secrets_file: secret file \(dir.file("creds/inbound-secrets")) does not exist"))
    }

    @Test func unknownEnvironmentVariableIsAProblem() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\n")
        defer { dir.cleanup() }
        let problems = await Self.problems(dir, env: ["CANDIDATE_RELAY_DELIVERY_WORKRES": "3"])
        #expect(problems == ["CANDIDATE_RELAY_DELIVERY_WORKRES: unknown environment variable (no such configuration key)"])
    }

    @Test func unwritableStoragePathIsAProblem() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/comeet-secret/o.sqlite3 }\n")
        defer { dir.cleanup() }
        let problems = await Self.problems(dir)
        #expect(problems.contains { $0.hasPrefix("storage.path:") })
    }

    /// A device or a FIFO (directly or through a symlink) is refused by validation, as serve
    /// would fail on it at the first commit.
    @Test func storagePathThatIsNotARegularFileIsAProblem() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/link }\n")
        defer { dir.cleanup() }
        try FileManager.default.createSymbolicLink(atPath: dir.file("link"), withDestinationPath: "/dev/null")
        #expect(await Self.problems(dir).contains("storage.path: \(dir.file("link")) is not a regular file (a device, a FIFO or a socket)"))
        try FileManager.default.removeItem(atPath: dir.file("link"))
        #expect(mkfifo(dir.file("link"), 0o600) == 0)
        #expect(await Self.problems(dir).contains { $0.hasPrefix("storage.path:") && $0.contains("not a regular file") })
    }

    /// Durations beyond reason (1e300 passed and then trapped in serve) are refused.
    @Test func durationsBeyondAYearAreProblems() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3, record_retention_days: 1e300 }
            partner: { timeout_seconds: 1e300, rate_limit: { requests: 100, per_seconds: 1e10 } }
            delivery: { max_age_seconds: 31536001, backoff: { multiplier: 1e9 } }
            """)
        defer { dir.cleanup() }
        let problems = await Self.problems(dir)
        #expect(problems.contains("partner.timeout_seconds: must be at most 31536000 (a year)"))
        #expect(problems.contains("partner.rate_limit.per_seconds: must be at most 31536000 (a year)"))
        #expect(problems.contains("delivery.max_age_seconds: must be at most 31536000 (a year)"))
        #expect(problems.contains("delivery.backoff.multiplier: must be at most 1000"))
        #expect(problems.contains("storage.record_retention_days: must be at most 36500 (100 years)"))
        #expect(problems.count == 5, "\(problems)")
    }

    /// And durations below a millisecond (1e-300 passed `> 0` and acted as none at all); 0
    /// stays what it is where it is allowed (no grace period).
    @Test func durationsUnderAMillisecondAreProblems() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            partner: { timeout_seconds: 1e-300, rate_limit: { requests: 100, per_seconds: 0.0009 } }
            delivery: { shutdown_grace_seconds: 0, backoff: { initial_seconds: 0.001, max_seconds: 0.001 } }
            """)
        defer { dir.cleanup() }
        let problems = await Self.problems(dir)
        #expect(problems.contains("partner.timeout_seconds: must be at least 0.001 (a millisecond)"))
        #expect(problems.contains("partner.rate_limit.per_seconds: must be at least 0.001 (a millisecond)"))
        #expect(problems.count == 2, "\(problems)")
    }

    /// Found from outside: a 300 MB secret file was read whole by `reload` and used as the key.
    @Test func aSecretFileTooLargeToBeOneIsAProblem() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\n")
        defer { dir.cleanup() }
        try dir.write("comeet-secret", String(repeating: "k", count: SecretReader.maxFileBytes + 1))
        let problems = await Self.problems(dir)
        #expect(problems.count == 1 && problems[0].hasPrefix("partner.auth.secret_file: secret file ")
                && problems[0].hasSuffix("is over 64 KiB: not a secret"), "\(problems)")
        try dir.write("comeet-secret", String(repeating: "k", count: SecretReader.maxFileBytes))
        #expect(await Self.problems(dir) == [])
        // Through a symlink (review: a size looked up on the link was the link's), and a FIFO or
        // device, which would be read for ever.
        try dir.write("big", String(repeating: "k", count: SecretReader.maxFileBytes + 1))
        try FileManager.default.removeItem(atPath: dir.file("comeet-secret"))
        try FileManager.default.createSymbolicLink(atPath: dir.file("comeet-secret"), withDestinationPath: dir.file("big"))
        #expect(await Self.problems(dir).first?.hasSuffix("is over 64 KiB: not a secret") == true)
        try FileManager.default.removeItem(atPath: dir.file("comeet-secret"))
        try FileManager.default.createSymbolicLink(atPath: dir.file("comeet-secret"), withDestinationPath: "/dev/zero")
        #expect(await Self.problems(dir).first?.hasSuffix("is not a regular file") == true)
        try FileManager.default.removeItem(atPath: dir.file("comeet-secret"))
        #expect(mkfifo(dir.file("comeet-secret"), 0o600) == 0)
        #expect(await Self.problems(dir).first?.hasSuffix("is not a regular file") == true)
    }

    /// Found from outside: a lifetime of 0.05 or 0.5 s was accepted, and every minted token had
    /// expired on arrival (every request a 401, every event dead).
    @Test(arguments: [("0.05", false), ("0.5", false), ("29", false), ("30", true), ("600", true), ("601", false)])
    func tokenLifetimesThatCannotWorkAreProblems(ttl: String, accepted: Bool) async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            partner: { auth: { mode: comeet_jwt, token_ttl_seconds: \(ttl) } }
            """)
        defer { dir.cleanup() }
        let problems = await Self.problems(dir)
        if accepted {
            #expect(problems == [])
        } else {
            #expect(problems.count == 1 && problems[0].hasPrefix("partner.auth.token_ttl_seconds: must be in [30, 600]"), "\(problems)")
        }
    }

    /// Records younger than the rate window rebuild it at start: deleting them sooner let a
    /// restart send a window's worth again (found from outside).
    @Test func recordRetentionShorterThanTheRateWindowIsAProblem() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3, payload_retention_days: 0, record_retention_days: 0.0001 }
            partner: { rate_limit: { requests: 5, per_seconds: 20 } }
            """)
        defer { dir.cleanup() }
        #expect(await Self.problems(dir) == ["storage.record_retention_days: must cover the longest rate window (20 s): "
            + "the history of requests inside it rebuilds the rate windows at start"])
    }

    /// A file that is not YAML is a problem that says where, without quoting the file: a
    /// refused reload logs its problems, and the line may hold a value typed inline.
    @Test func invalidYAMLIsLocatedNotQuoted() async throws {
        let dir = try Self.fixture("listen: { host: 127.0.0.1, port: 8080\nclient_secret: hunter2-inline\n  bad: [\n")
        defer { dir.cleanup() }
        let problems = await Self.problems(dir)
        #expect(problems.count == 1)
        #expect(problems.first?.hasPrefix("config file is not valid YAML: line 2, column ") == true, "\(problems)")
        #expect(!problems.joined().contains("hunter2"))
    }

    /// A repeated key: Yams's message quotes the whole file, comments included (a secret pasted
    /// in a comment reached the refused reload's log line). Where and which key, nothing more.
    @Test func aRepeatedKeyIsNamedNotQuoted() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            # partner secret was: Sup3rS3cretPartnerKey
            logging: { level: info }
            logging: { level: debug }
            accounts:
              acme: { api_key_file: k }
              "Sup3rS3cret-as-a-key": { api_key_file: k }
              "Sup3rS3cret-as-a-key": { api_key_file: k }
            """)
        defer { dir.cleanup() }
        let problems = await Self.problems(dir)
        #expect(problems.count == 1, "\(problems)")
        #expect(problems.first?.hasPrefix("config file is not valid YAML: line ") == true, "\(problems)")
        #expect(problems.first?.contains("repeats") == true, "\(problems)")
        #expect(!problems.joined().contains("Sup3r"), "\(problems)")
    }

    /// Found from outside: a mistake saved in `delivery.workers` (which the daemon's reload
    /// refused) left every admin command at exit 78, `status`, `backup` and `forget` included.
    /// They need only `storage`: problems elsewhere come back beside the configuration; one in
    /// `storage` (or in the file itself) still stops them. A directory named as the file is said
    /// so, not as Foundation's "NSCocoaErrorDomain Code=256".
    @Test func theAdminCommandsNeedOnlyASoundStorageSection() async throws {
        let elsewhere = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3, payload_retention_days: 3 }
            delivery: { workers: 0 }
            """)
        defer { elsewhere.cleanup() }
        #expect(await Self.problems(elsewhere).contains { $0.hasPrefix("delivery.workers:") })
        let loader = ConfigurationLoader(configPath: elsewhere.file("config.yaml"), environment: [:])
        let (config, others) = try await loader.loadForOutbox()
        #expect(config.storage.path == elsewhere.file("o.sqlite3"))
        #expect(config.storage.payloadRetentionDays == 3)
        #expect(others.map(\.key) == ["delivery.workers"], "\(others)")

        // A problem in storage, or an unknown key or variable (`storag:` would leave the path at
        // its default: another daemon's outbox), stops them as before.
        for yaml in ["storage: { path: $DIR/o.sqlite3, payload_retention_days: -1 }\ndelivery: { workers: 0 }",
                     "storage: { path: $DIR/o.sqlite3, paht: x }", "storag: { path: $DIR/o.sqlite3 }", "delivery: { wokers: 2 }"] {
            let dir = try Self.fixture(yaml)
            defer { dir.cleanup() }
            do {
                _ = try await ConfigurationLoader(configPath: dir.file("config.yaml"), environment: [:]).loadForOutbox()
                Issue.record("loaded: \(yaml)")
            } catch let error as ConfigurationError {
                #expect(!error.problems.isEmpty, "\(yaml)")
            }
        }
        for environment in [["CANDIDATE_RELAY_STORAGE_PAYLOAD_RETENTION_DAYS": "x"], ["CANDIDATE_RELAY_STORAG_PATH": "/tmp/x"]] {
            let loader = ConfigurationLoader(configPath: elsewhere.file("config.yaml"), environment: environment)
            await #expect(throws: ConfigurationError.self) { _ = try await loader.loadForOutbox() }
        }

        do {
            _ = try await ConfigurationLoader(configPath: elsewhere.path, environment: [:]).loadForOutbox()
            Issue.record("loaded a directory")
        } catch let error as ConfigurationError {
            #expect(error.problems.map(\.description) == ["config file \(elsewhere.path) is a directory: name the YAML file in it"])
        }
    }

    @Test func explicitMissingConfigFileIsAProblem() async {
        do {
            _ = try await ConfigurationLoader(configPath: "/nonexistent/c.yaml", environment: [:]).load()
            Issue.record("loaded")
        } catch let error as ConfigurationError {
            #expect(error.problems.map(\.description) == ["config file /nonexistent/c.yaml does not exist"])
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test func renderedConfigurationRedactsSecrets() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\ningest: { bearer_token_file: token }\n")
        defer { dir.cleanup() }
        try dir.write("token", "bearer-token-value")
        let rendered = try await Self.load(dir).renderedYAML()
        for secret in ["key-123", "s3cr3t-value", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "bearer-token-value"] {
            #expect(!rendered.contains(secret))
        }
        #expect(rendered.contains("<redacted: file \(dir.file("comeet-secret"))>"))
        #expect("\(Secret("abc", source: "x"))" == "<redacted from x>")
    }

    /// check-config's printout is YAML that reads back as the values loaded: a newline, `#`,
    /// `: ` or a quote in a string value shows as itself, not as another key or a comment.
    @Test func renderedConfigurationParsesBackToTheValuesLoaded() async throws {
        let dir = try Self.fixture(#"""
            listen: { host: "127.0.0.1", port: 8080 }
            storage: { path: "$DIR/o # x: y \"q\" \\ z.sqlite3" }
            partner:
              base_url: "http://127.0.0.1:1/p"
              auth:
                mode: oauth2_client_credentials
                token_url: "https://auth.example.com/token"
                client_id: "relay\nstorage: { path: /elsewhere } # not a comment\u2028"
                client_secret_file: "client secret #1"
                scope: "candidates:write #1\uFFFE"
            """#)
        defer { dir.cleanup() }
        try dir.write("client secret #1", "oauth-secret-value\n")
        let config = try await Self.load(dir)
        let rendered = config.renderedYAML()
        #expect(!rendered.contains("oauth-secret-value"))
        let yaml = try #require(try Yams.load(yaml: rendered) as? [String: Any], "\(rendered)")
        let storage = try #require(yaml["storage"] as? [String: Any])
        #expect(storage["path"] as? String == config.storage.path)
        #expect(config.storage.path.hasSuffix(#"/o # x: y "q" \ z.sqlite3"#))
        let partner = try #require(yaml["partner"] as? [String: Any])
        #expect(partner["base_url"] as? String == "http://127.0.0.1:1/p")
        let auth = try #require(partner["auth"] as? [String: Any])
        #expect(auth["client_id"] as? String == "relay\nstorage: { path: /elsewhere } # not a comment\u{2028}")
        #expect(auth["scope"] as? String == "candidates:write #1\u{FFFE}")
        #expect(auth["client_secret"] as? String == "<redacted: file \(dir.file("client secret #1"))>")
        #expect((yaml["listen"] as? [String: Any])?["host"] as? String == "127.0.0.1")
    }

    /// A bearer token no `Authorization` header can carry is a problem, not a daemon that
    /// answers every webhook 401. The problem names the file, never the token.
    /// One token per line (several while one is rotated); a control character or a line
    /// separator within a token is a problem: no request could carry it (found from outside).
    @Test func aBearerTokenWithAControlCharacterIsAProblem() async throws {
        for (token, ok) in [("zq9\u{7}x", false), ("zq\t9", false), ("zq9\u{2028}x", false), ("zq9-1\nzq\u{85}9\n", false),
                            ("zq9-1\nzq9-2\n", true), ("zq9-1\r\nzq9-2\r\n", true), ("  zq9-1  \n", true), ("zq9 x", true)] {
            let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\ningest: { bearer_token_file: token }\n")
            defer { dir.cleanup() }
            try dir.write("token", token)
            let problems = await Self.problems(dir)
            #expect(problems == (ok ? [] : ["ingest.bearer_token_file: a token from file \(dir.file("token")) holds a control character or a line separator: no request could carry it (one token per line)"]),
                    "\(token.debugDescription)")
            #expect(!problems.joined().contains("zq"))
        }
    }

    @Test func oauthModeNeedsItsKeys() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\npartner: { auth: { mode: oauth2_client_credentials } }\n")
        defer { dir.cleanup() }
        let problems = await Self.problems(dir)
        #expect(problems.contains { $0.hasPrefix("partner.auth.token_url:") })
        #expect(problems.contains { $0.hasPrefix("partner.auth.client_id:") })
        #expect(problems.contains { $0.hasPrefix("partner.auth.client_secret_file:") })
    }

    @Test func noInboundAuthenticationIsRefusedUnlessExplicit() async throws {
        let dir = try Self.fixture("storage: { path: $DIR/o.sqlite3 }\ningest: { signing_secrets_file: null }\n")
        defer { dir.cleanup() }
        #expect(await Self.problems(dir).contains { $0.hasPrefix("ingest: no inbound authentication") })
        try dir.write("config.yaml", "storage: { path: \(dir.path)/o.sqlite3 }\ningest: { signing_secrets_file: null, allow_unauthenticated: true }\n")
        #expect(await Self.problems(dir).isEmpty)
    }
}
