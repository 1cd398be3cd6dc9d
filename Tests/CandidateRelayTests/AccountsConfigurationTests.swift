import CandidateRelayTesting
import Foundation
import Testing
import Yams
@testable import CandidateRelay

/// The `accounts:` section and `partner.global_rate_limit` (CONTRACT section 8), loaded from
/// real files as `ConfigurationTests` does.
@Suite struct AccountsConfigurationTests {
    static let otherWebhookSecret = "whsec_" + Data(repeating: 2, count: 24).base64EncodedString()

    /// `ConfigurationTests.fixture` plus one file per `(name, content)`.
    static func fixture(_ yaml: String, files: [String: String] = [:]) throws -> TemporaryDirectory {
        let dir = try ConfigurationTests.fixture(yaml)
        for (name, content) in files { try dir.write(name, content + "\n") }
        return dir
    }

    /// Signed ingest and the named accounts, each with an api-key file `<id>-key` holding the
    /// given key (the accounts in the order given).
    static func fixture(accounts: KeyValuePairs<String, String>) throws -> TemporaryDirectory {
        let lines = accounts.map { "  \($0.key): { api_key_file: \($0.key)-key }" }.joined(separator: "\n")
        return try fixture("""
            storage: { path: $DIR/o.sqlite3 }
            ingest: { signing_secrets_file: inbound-secrets }
            accounts:
            \(lines)
            """, files: Dictionary(uniqueKeysWithValues: accounts.map { ("\($0.key)-key", $0.value) }))
    }

    static func account(_ config: RelayConfiguration, _ id: String) -> AccountConfiguration? {
        config.accounts.first { $0.id == id }
    }

    /// The api-key and secret of a `comeet_jwt` account.
    static func credentials(_ account: AccountConfiguration?) -> (apiKey: String, secret: String)? {
        guard case .comeetJWT(let apiKey, let secret, _)? = account?.auth else { return nil }
        return (apiKey.value, secret.value)
    }

    /// With `accounts:`, partner.auth holds defaults only: a default not given is rendered
    /// `null`, not as a secret read "from missing".
    @Test func checkConfigShowsAnUnsetDefaultAsNull() async throws {
        let dir = try Self.fixture(accounts: ["acme": "acme-key"])
        defer { dir.cleanup() }
        let rendered = try await ConfigurationTests.load(dir).renderedYAML()
        #expect(!rendered.contains("missing"), "\(rendered)")
        #expect(rendered.contains("partner:\n  base_url:"))
        #expect(rendered.contains("    api_key: null\n"))
        #expect(rendered.contains("\"acme\":\n    api_key: \"<redacted: file"))
    }

    /// Ids YAML would read as a number, null or a boolean are printed quoted (review).
    @Test func checkConfigPrintsAccountIdsAsStrings() async throws {
        let dir = try Self.fixture(accounts: ["null": "null-key", "123": "numbered-key", "yes": "yes-key"])
        defer { dir.cleanup() }
        let rendered = try await ConfigurationTests.load(dir).renderedYAML()
        let yaml = try #require(try Yams.load(yaml: rendered) as? [String: Any])
        let accounts = try #require(yaml["accounts"] as? [String: Any], "\(rendered)")
        #expect(Set(accounts.keys) == ["null", "123", "yes"])
    }

    @Test func withoutAccountsThereIsExactlyTheDefaultAccount() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            ingest: { bearer_token_file: ingest-token }
            partner: { rate_limit: { requests: 10, per_seconds: 2 } }
            """, files: ["ingest-token": "bearer-value"])
        defer { dir.cleanup() }
        let config = try await ConfigurationTests.load(dir)
        #expect(config.namedAccounts == nil)
        #expect(config.accounts.map(\.id) == ["default"])
        let account = try #require(config.accounts.first)
        #expect(Self.credentials(account)?.apiKey == "key-123")
        #expect(Self.credentials(account)?.secret == "s3cr3t-value")
        #expect(account.rateLimit == RateLimitConfiguration(requests: 10, perSeconds: 2))
        #expect(account.signingSecrets.map(\.value) == ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
        #expect(account.bearerToken?.value == "bearer-value")
        #expect(config.partner.globalRateLimit == RateLimitConfiguration(requests: 0, perSeconds: 60))
    }

    @Test func accountsTakeTheirDefaultsFromPartnerAndIngest() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            ingest: { signing_secrets_file: inbound-secrets, bearer_token_file: ingest-token }
            partner: { rate_limit: { requests: 50, per_seconds: 30 } }
            accounts:
              acme:
                api_key_file: acme-key
              globex:
                api_key_file: globex-key
                secret_file: globex-secret
                rate_limit: { requests: 7, per_seconds: 10 }
                inbound: { signing_secrets_file: globex-inbound, bearer_token_file: null }
              initech:
                api_key_file: initech-key
                rate_limit: { requests: 3 }
              hooli:
                api_key_file: hooli-key
                inbound: { bearer_token_file: hooli-token }
            """, files: ["acme-key": "acme-api-key", "globex-key": "globex-api-key", "globex-secret": "globex-secret-value",
                         "globex-inbound": Self.otherWebhookSecret, "initech-key": "initech-api-key", "ingest-token": "ingest-bearer",
                         "hooli-key": "hooli-api-key", "hooli-token": "hooli-bearer"])
        defer { dir.cleanup() }
        let config = try await ConfigurationTests.load(dir)
        #expect(config.accounts.map(\.id) == ["acme", "globex", "hooli", "initech"])

        let acme = try #require(Self.account(config, "acme"))
        #expect(Self.credentials(acme)?.apiKey == "acme-api-key")
        #expect(Self.credentials(acme)?.secret == "s3cr3t-value")  // partner.auth.secret_file's default file
        #expect(acme.rateLimit == RateLimitConfiguration(requests: 50, perSeconds: 30))
        #expect(acme.signingSecrets.map(\.value) == ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
        #expect(acme.bearerToken?.value == "ingest-bearer")

        let globex = try #require(Self.account(config, "globex"))
        #expect(Self.credentials(globex)?.apiKey == "globex-api-key")
        #expect(Self.credentials(globex)?.secret == "globex-secret-value")
        #expect(globex.rateLimit == RateLimitConfiguration(requests: 7, perSeconds: 10))
        #expect(globex.signingSecrets.map(\.value) == [Self.otherWebhookSecret])
        #expect(globex.bearerToken == nil)  // an explicit null turns the default off

        // Each inbound key falls back on its own (CONTRACT section 8): its own token, the shared
        // signing secrets. (Taking neither shared one once either is set, tried after an outside
        // attack, left an account with its own secret and a shared token with open reads.)
        let hooli = try #require(Self.account(config, "hooli"))
        #expect(hooli.bearerToken?.value == "hooli-bearer")
        #expect(hooli.signingSecrets.map(\.value) == ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])

        // A partial rate_limit takes the rest from partner.rate_limit.
        #expect(Self.account(config, "initech")?.rateLimit == RateLimitConfiguration(requests: 3, perSeconds: 30))
    }

    @Test func eachAccountNeedsItsApiKey() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            accounts:
              acme: { rate_limit: { requests: 5 } }
              globex: { api_key_file: nope }
            """)
        defer { dir.cleanup() }
        let problems = await ConfigurationTests.problems(dir)
        #expect(problems.contains("accounts.acme.api_key_file: required: set the file or CANDIDATE_RELAY_ACCOUNTS_ACME_API_KEY"))
        #expect(problems.contains("accounts.globex.api_key_file: secret file \(dir.file("nope")) does not exist (next to the config file: CREDENTIALS_DIRECTORY is not set)"))
    }

    @Test func withAccountsPartnerAuthApiKeyIsNotNeeded() async throws {
        let dir = try Self.fixture(accounts: ["acme": "acme-api-key"])
        defer { dir.cleanup() }
        try FileManager.default.removeItem(atPath: dir.file("comeet-api-key"))
        #expect(await ConfigurationTests.problems(dir) == [])
        let config = try await ConfigurationTests.load(dir)
        #expect(config.accounts.map(\.id) == ["acme"])  // no `default` unless one is named so
    }

    /// With `accounts:`, `ingest.signing_secrets_file` has no default file: one customer's
    /// signature must not open another's account unless the config says so.
    @Test func withAccountsTheInboundSecretsAreNotSharedImplicitly() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            accounts:
              acme: { api_key_file: acme-key }
            """, files: ["acme-key": "acme-api-key"])
        defer { dir.cleanup() }
        #expect(await ConfigurationTests.problems(dir) == [
            "accounts.acme.inbound: no inbound authentication: set signing_secrets_file or bearer_token_file, or allow_unauthenticated: true",
        ])
    }

    @Test func invalidIdsAndUnknownKeysAreProblems() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            ingest: { signing_secrets_file: inbound-secrets }
            accounts:
              "Acme!": { api_key_file: acme-key }
              acme: { api_key_file: acme-key, colour: blue, inbound: { signing_secret_file: x } }
            """, files: ["acme-key": "acme-api-key"])
        defer { dir.cleanup() }
        let problems = await ConfigurationTests.problems(dir)
        #expect(problems.contains("accounts.Acme!: account id must match [a-z0-9][a-z0-9_-]{0,62}"))
        #expect(problems.contains("accounts.acme.colour: unknown key"))
        #expect(problems.contains("accounts.acme.inbound.signing_secret_file: unknown key"))
        try dir.write("config.yaml", "storage: { path: \(dir.path)/o.sqlite3 }\naccounts: {}\n")
        #expect(await ConfigurationTests.problems(dir).contains("accounts: names no account: remove it, or name at least one"))
    }

    @Test func environmentOverridesAnAccountsKeys() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            ingest: { signing_secrets_file: inbound-secrets }
            accounts:
              acme: { api_key_file: acme-key, rate_limit: { requests: 5 } }
              big-co: { api_key_file: big-key }
              initech: {}
            """, files: ["acme-key": "acme-file-key", "big-key": "big-api-key"])
        defer { dir.cleanup() }
        let config = try await ConfigurationTests.load(dir, env: [
            "CANDIDATE_RELAY_ACCOUNTS_ACME_API_KEY": "acme-env-key",
            "CANDIDATE_RELAY_ACCOUNTS_ACME_SECRET": "acme-env-secret",
            "CANDIDATE_RELAY_ACCOUNTS_ACME_RATE_LIMIT_REQUESTS": "9",
            "CANDIDATE_RELAY_ACCOUNTS_BIG_CO_RATE_LIMIT_PER_SECONDS": "5",
            "CANDIDATE_RELAY_ACCOUNTS_INITECH_API_KEY": "initech-env-key",
        ])
        let acme = try #require(Self.account(config, "acme"))
        #expect(Self.credentials(acme)?.apiKey == "acme-env-key")
        #expect(Self.credentials(acme)?.secret == "acme-env-secret")
        #expect(acme.rateLimit.requests == 9)
        let bigCo = try #require(Self.account(config, "big-co"))
        #expect(bigCo.rateLimit == RateLimitConfiguration(requests: 100, perSeconds: 5))
        #expect(Self.credentials(bigCo)?.secret == "s3cr3t-value")
        #expect(Self.credentials(Self.account(config, "initech"))?.apiKey == "initech-env-key")
    }

    @Test func anEnvironmentVariableForAnAccountNotInTheFileIsUnknown() async throws {
        let dir = try Self.fixture(accounts: ["acme": "acme-api-key"])
        defer { dir.cleanup() }
        #expect(await ConfigurationTests.problems(dir, env: ["CANDIDATE_RELAY_ACCOUNTS_GLOBEX_API_KEY": "k"])
                == ["CANDIDATE_RELAY_ACCOUNTS_GLOBEX_API_KEY: unknown environment variable (no such configuration key)"])
        // Nor can the environment create accounts in a config without `accounts:`.
        try dir.write("config.yaml", "storage: { path: \(dir.path)/o.sqlite3 }\n")
        #expect(await ConfigurationTests.problems(dir, env: ["CANDIDATE_RELAY_ACCOUNTS_ACME_RATE_LIMIT_REQUESTS": "1"])
                == ["CANDIDATE_RELAY_ACCOUNTS_ACME_RATE_LIMIT_REQUESTS: unknown environment variable (no such configuration key)"])
    }

    @Test func twoAccountsWithOneApiKeyIsAProblem() async throws {
        let dir = try Self.fixture(accounts: ["acme": "same-key", "globex": " same-key "])
        defer { dir.cleanup() }
        #expect(await ConfigurationTests.problems(dir)
                == ["accounts.globex.api_key_file: the same api-key as account acme: one customer, one account"])
    }

    /// `a-b` and `a_b` are both valid ids, but `CANDIDATE_RELAY_ACCOUNTS_A_B_*` would set both.
    @Test func idsThatShareEnvironmentNamesAreAProblem() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            ingest: { signing_secrets_file: inbound-secrets }
            accounts:
              big-co: { api_key_file: k1 }
              big_co: { api_key_file: k2 }
            """, files: ["k1": "key-1", "k2": "key-2"])
        defer { dir.cleanup() }
        let problems = await ConfigurationTests.problems(dir)
        #expect(problems
                == ["accounts.big_co: its environment variables (CANDIDATE_RELAY_ACCOUNTS_BIG_CO_*) are also account big-co's: rename one"])
    }

    @Test func globalRateLimitIsParsedAndValidated() async throws {
        let dir = try Self.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            partner: { global_rate_limit: { requests: 500, per_seconds: 30 } }
            """)
        defer { dir.cleanup() }
        #expect(try await ConfigurationTests.load(dir).partner.globalRateLimit == RateLimitConfiguration(requests: 500, perSeconds: 30))
        let fromEnv = try await ConfigurationTests.load(dir, env: ["CANDIDATE_RELAY_PARTNER_GLOBAL_RATE_LIMIT_REQUESTS": "700"])
        #expect(fromEnv.partner.globalRateLimit.requests == 700)
        try dir.write("config.yaml", """
            storage: { path: \(dir.path)/o.sqlite3 }
            partner: { global_rate_limit: { requests: -1, per_seconds: 0 } }
            """)
        let problems = await ConfigurationTests.problems(dir)
        #expect(problems.contains("partner.global_rate_limit.requests: must be >= 0 (0 = off)"))
        #expect(problems.contains("partner.global_rate_limit.per_seconds: must be > 0"))
        try dir.write("config.yaml", "storage: { path: \(dir.path)/o.sqlite3 }\npartner: { global_rate_limit: { requests: many } }\n")
        #expect(await ConfigurationTests.problems(dir) == ["partner.global_rate_limit.requests: expected an integer, got \"many\""])
    }

    /// A missing shared default is one problem, not one per account that falls back on it.
    @Test func aMissingSharedSecretIsReportedOnce() async throws {
        let dir = try Self.fixture(accounts: ["acme": "acme-api-key", "globex": "globex-api-key"])
        defer { dir.cleanup() }
        try FileManager.default.removeItem(atPath: dir.file("comeet-secret"))
        let problems = await ConfigurationTests.problems(dir)
        #expect(problems
                == ["partner.auth.secret_file: secret file \(dir.file("comeet-secret")) does not exist (next to the config file: CREDENTIALS_DIRECTORY is not set)"])
        // So is a bad value of a partner.auth key that every account reads.
        try dir.write("comeet-secret", "s3cr3t-value")
        let original = try String(contentsOfFile: dir.file("config.yaml"), encoding: .utf8)
        try dir.write("config.yaml", original + "\npartner: { auth: { token_ttl_seconds: soon } }\n")
        let ttl = await ConfigurationTests.problems(dir)
        #expect(ttl == ["partner.auth.token_ttl_seconds: expected a number, got \"soon\""])
    }

    /// The admin commands load the config without secrets: accounts whose files are missing load.
    @Test func adminCommandsNeedNoAccountSecrets() async throws {
        let dir = try ConfigurationTests.fixture("""
            storage: { path: $DIR/o.sqlite3 }
            accounts:
              acme: { api_key_file: acme-key }
              globex: {}
            """, secrets: false)
        defer { dir.cleanup() }
        let config = try await ConfigurationLoader(configPath: dir.file("config.yaml"), environment: [:]).load(secretsRequired: false)
        #expect(config.accounts.map(\.id) == ["acme", "globex"])
        #expect(config.storage.path == dir.file("o.sqlite3"))
    }
}
