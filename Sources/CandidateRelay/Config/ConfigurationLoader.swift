import Configuration
import Foundation
import Logging
import SystemPackage
import Yams

/// One problem that makes a configuration unusable, said in one line for `check-config`.
public struct ConfigurationProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public let key: String
    public let message: String
    public init(_ key: String, _ message: String) {
        self.key = key
        self.message = message
    }
    public var description: String { key.isEmpty ? message : "\(key): \(message)" }
}

/// All problems found at once (exit 78, one line each).
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public let problems: [ConfigurationProblem]
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// Assembles the providers (env > YAML file > defaults), reads secrets through their one door,
/// and validates everything once. Used at start-up, by `check-config`, and on SIGHUP.
public struct ConfigurationLoader: Sendable {
    /// The default location when neither `--config` nor `$CANDIDATE_RELAY_CONFIG` names one.
    public static let defaultPath = "/etc/candidate-relay/config.yaml"

    public let configPath: String
    /// Whether the path was named explicitly (then a missing file is an error).
    public let pathIsExplicit: Bool
    public let environment: [String: String]

    public init(configPath: String?, environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let configPath {
            self.configPath = configPath
            self.pathIsExplicit = true
        } else if let fromEnv = environment["CANDIDATE_RELAY_CONFIG"], !fromEnv.isEmpty {
            self.configPath = fromEnv
            self.pathIsExplicit = true
        } else {
            self.configPath = Self.defaultPath
            self.pathIsExplicit = false
        }
        self.environment = environment
    }

    /// Loads and validates; throws `ConfigurationError` listing every problem. Admin commands
    /// pass `secretsRequired: false`: they work on the outbox file and need no credentials.
    public func load(secretsRequired: Bool = true) async throws -> RelayConfiguration {
        let (config, problems, _) = try await evaluate(secretsRequired: secretsRequired)
        guard problems.isEmpty else { throw ConfigurationError(problems: problems) }
        return config
    }

    /// For the admin commands, which work on the outbox file and need only the `storage`
    /// section: the configuration, and its problems in the other sections, which do not stop
    /// them (found from outside: a mistake saved in `delivery.workers`, which the daemon's reload
    /// refused, left the operator without `status`, `backup` or `forget` until the file was
    /// fixed). Only a value refused for a known key outside `storage` is let through: a problem
    /// in `storage`, an unknown key or variable (`storag:` misspelt would leave `storage.path`
    /// at its default, another daemon's outbox), or the file itself (unreadable, not YAML, not a
    /// mapping) throws `ConfigurationError` with every problem, as `load` does.
    public func loadForOutbox() async throws -> (config: RelayConfiguration, otherProblems: [ConfigurationProblem]) {
        let (config, problems, known) = try await evaluate(secretsRequired: false)
        if problems.contains(where: { !known.contains($0.key) || $0.key.hasPrefix("storage.") }) {
            throw ConfigurationError(problems: problems)
        }
        return (config, problems)
    }

    /// The configuration as built, with every problem found and the keys it knows (those of
    /// the accounts the file names too); throws only when there is nothing to build from (a
    /// file that cannot be read or parsed, an explicit path with no file).
    private func evaluate(secretsRequired: Bool) async throws -> (RelayConfiguration, [ConfigurationProblem], Set<String>) {
        var problems: [ConfigurationProblem] = []
        var providers: [any ConfigProvider] = [
            // An empty variable sets nothing (as for the secrets): it meant the key's default,
            // over the file's value (found from outside: `CANDIDATE_RELAY_PARTNER_BASE_URL=` left
            // blank in an EnvironmentFile sent a sandbox's candidates to the production API).
            EnvironmentVariablesProvider(environmentVariables: environment.filter { !$0.value.allSatisfy(\.isWhitespace) })
                .prefixKeys(with: "candidate_relay")
        ]
        var isDirectory: ObjCBool = false
        let fileExists = FileManager.default.fileExists(atPath: configPath, isDirectory: &isDirectory)
        if fileExists && isDirectory.boolValue {
            // Not Foundation's "NSCocoaErrorDomain Code=256" for the read below.
            throw ConfigurationError(problems: [.init("", "config file \(configPath) is a directory: name the YAML file in it")])
        }
        var accountIDs: [String]?
        if fileExists {
            do {
                let text = try String(contentsOfFile: configPath, encoding: .utf8)
                let document = try Self.compose(text)
                accountIDs = Self.accountIDs(in: document, problems: &problems)
                problems += Self.unknownKeys(in: document, accounts: accountIDs ?? [])
                providers.append(try await FileProvider<YAMLSnapshot>(filePath: FilePath(configPath)))
            } catch let error as ConfigurationProblem {
                problems.append(error)
            } catch {
                problems.append(.init("", "cannot read config file \(configPath): \(Self.oneLine(error))"))
            }
        } else if pathIsExplicit {
            throw ConfigurationError(problems: [.init("", "config file \(configPath) does not exist")])
        }
        problems += unknownEnvironmentKeys(accounts: accountIDs ?? [])
        // A file that cannot be parsed stops here; unknown keys are reported with everything else.
        if fileExists && providers.count == 1 { throw ConfigurationError(problems: problems) }

        var reader = ConfigValues(reader: ConfigReader(providers: providers))
        let secrets = SecretReader(
            environment: environment,
            credentialsDirectory: environment["CREDENTIALS_DIRECTORY"],
            configDirectory: (configPath as NSString).deletingLastPathComponent,
            required: secretsRequired
        )
        let config = Self.build(&reader, secrets: secrets, accountIDs: accountIDs)
        problems += reader.problems + secrets.problems
            + Self.validate(config, secretsRequired: secretsRequired, unreadSecrets: Set(secrets.problems.map(\.key)))
        // A key that several accounts fall back on (partner.auth.secret_file, token_ttl_seconds,
        // mode) is read once per account: its problem is still one line.
        var seen = Set<String>()
        problems = problems.filter { seen.insert($0.description).inserted }
        return (config, problems, Set(ConfigurationKeys.all(accounts: accountIDs ?? [])))
    }

    private func unknownEnvironmentKeys(accounts: [String]) -> [ConfigurationProblem] {
        let keys = ConfigurationKeys.all(accounts: accounts)
        let known = Set(keys.map(ConfigurationKeys.environmentName))
            .union(ConfigurationKeys.secretEnvironmentKeys(keys).map(ConfigurationKeys.environmentName))
            .union(ConfigurationKeys.reservedEnvironmentNames)
        return environment.keys.filter { $0.hasPrefix("CANDIDATE_RELAY_") && !known.contains($0) }
            .sorted()
            .map { .init($0, "unknown environment variable (no such configuration key)") }
    }

    static func compose(_ text: String) throws -> Node? {
        do {
            return try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationProblem("", "config file is not valid YAML: \(yamlProblem(error))")
        }
    }

    /// Where and what, without the line of the file that Yams quotes: a refused reload logs its
    /// problems, and a value typed inline by mistake (a secret) must not reach the log with them.
    static func yamlProblem(_ error: any Error) -> String {
        guard let error = error as? YamlError else { return oneLine(error) }
        switch error {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _), let .composer(context, problem, mark, _):
            let around = context.map { "\($0.text) (line \($0.mark.line), column \($0.mark.column)): " } ?? ""
            return "line \(mark.line), column \(mark.column): \(around)\(problem)"
        case let .reader(problem, offset, _, _):
            return "\(problem)" + (offset.map { " at byte \($0)" } ?? "")
        case let .duplicatedKeysInMapping(duplicates, context):
            // Yams's own description quotes the whole mapping (the whole file, comments and all).
            let names = duplicates.sorted().map { Self.isPlainKey($0) ? "'\($0)'" : "(a key not shown)" }
            return "line \(context.mark.line), column \(context.mark.column): the mapping repeats \(names.joined(separator: ", ")): each key once"
        default:
            return oneLine(error)
        }
    }

    /// A key as the configuration spells them (`max_body_bytes`, an account id), fit to be named
    /// in a problem; anything else is not echoed.
    static func isPlainKey(_ key: String) -> Bool {
        !key.isEmpty && key.utf8.count <= 64 && key.utf8.allSatisfy { byte in
            (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x5F || byte == 0x2D
        }
    }

    /// The ids under `accounts:`, sorted; nil when the section is absent (or null). Ids that are
    /// not `[a-z0-9][a-z0-9_-]{0,62}` are problems (and left out), and so are two ids that differ
    /// only in `-` and `_` (their environment variables would be the same).
    static func accountIDs(in root: Node?, problems: inout [ConfigurationProblem]) -> [String]? {
        guard case .mapping(let top)? = root, let section = top["accounts"] else { return nil }
        if case .scalar(let s) = section, s.string.isEmpty || s.string == "null" || s.string == "~" { return nil }
        guard case .mapping(let mapping) = section else {
            problems.append(.init("accounts", "must be a mapping of account ids"))
            return []
        }
        var ids: [String] = []
        for key in mapping.keys {
            let id = key.string ?? "?"
            if AccountConfiguration.isValidID(id) { ids.append(id) } else {
                problems.append(.init("accounts.\(id)", "account id must match [a-z0-9][a-z0-9_-]{0,62}"))
            }
        }
        if mapping.count == 0 { problems.append(.init("accounts", "names no account: remove it, or name at least one")) }
        // `big-co` and `big_co` are both valid, but one set of CANDIDATE_RELAY_ACCOUNTS_BIG_CO_* would set both.
        var byEnvironmentName: [String: String] = [:]
        for id in ids.sorted() {
            let name = ConfigurationKeys.environmentName("accounts.\(id)")
            if let other = byEnvironmentName[name] {
                problems.append(.init("accounts.\(id)", "its environment variables (\(name)_*) are also account \(other)'s: rename one"))
            } else {
                byEnvironmentName[name] = id
            }
        }
        return ids.sorted()
    }

    /// Reports keys of the YAML text that are not configuration keys (tests use this form).
    static func unknownKeys(inYAML text: String) throws -> [ConfigurationProblem] {
        let root = try compose(text)
        var ignored: [ConfigurationProblem] = []
        return unknownKeys(in: root, accounts: accountIDs(in: root, problems: &ignored) ?? [])
    }

    /// Walks the YAML document and reports keys that are not in `ConfigurationKeys.all`.
    static func unknownKeys(in root: Node?, accounts: [String]) -> [ConfigurationProblem] {
        guard let root else { return [] }
        guard case .mapping = root else { return [.init("", "config file must be a YAML mapping")] }
        let keys = ConfigurationKeys.all(accounts: accounts)
        let known = Set(keys)
        let prefixes = Set(keys.flatMap { key in
            let parts = key.split(separator: ".")
            return (1..<parts.count).map { parts[0..<$0].joined(separator: ".") }
        })
        var problems: [ConfigurationProblem] = []
        func walk(_ node: Node, path: String) {
            guard case .mapping(let mapping) = node else { return }
            for (keyNode, value) in mapping {
                let name = keyNode.string ?? "?"
                let full = path.isEmpty ? name : "\(path).\(name)"
                if full == "accounts" {
                    // Its problems (not a mapping, empty, bad ids) come from accountIDs(in:problems:).
                    if case .mapping = value { walk(value, path: full) }
                } else if known.contains(full) {
                    if case .scalar = value { continue }
                    problems.append(.init(full, "must be a single value, not a list or mapping"))
                } else if prefixes.contains(full) {
                    if case .mapping = value { walk(value, path: full) } else if case .scalar(let s) = value, s.string.isEmpty || s.string == "null" || s.string == "~" {
                        continue
                    } else {
                        problems.append(.init(full, "must be a mapping"))
                    }
                } else if path == "accounts" {
                    continue  // an invalid account id, reported by accountIDs(in:problems:)
                } else {
                    problems.append(.init(full, "unknown key"))
                }
            }
        }
        walk(root, path: "")
        return problems
    }

    static func oneLine(_ error: any Error) -> String {
        "\(error)".replacingOccurrences(of: "\n", with: " ")
    }
}
