import Foundation

/// The one door through which secrets enter the relay. A `*_file` key names a file (a relative
/// name resolves in `$CREDENTIALS_DIRECTORY` when set, as systemd's `LoadCredential=` provides,
/// else next to the config file); the env var of the key without `_file` overrides it. File
/// content is trimmed. Problems name the key and the path, never the content.
final class SecretReader: @unchecked Sendable {
    let environment: [String: String]
    let credentialsDirectory: String?
    let configDirectory: String
    private var recorded: [ConfigurationProblem] = []
    /// Admin commands need no secrets: then a missing one is not a problem.
    let required: Bool

    var problems: [ConfigurationProblem] { required ? recorded : [] }

    init(environment: [String: String], credentialsDirectory: String?, configDirectory: String, required: Bool = true) {
        self.required = required
        self.environment = environment
        self.credentialsDirectory = credentialsDirectory
        self.configDirectory = configDirectory.isEmpty ? "." : configDirectory
    }

    /// Resolves a relative secret file name.
    func resolve(_ name: String) -> String {
        if name.hasPrefix("/") { return name }
        if let credentialsDirectory, !credentialsDirectory.isEmpty {
            return (credentialsDirectory as NSString).appendingPathComponent(name)
        }
        return (configDirectory as NSString).appendingPathComponent(name)
    }

    /// Whether the env var that overrides `fileKey` carries a value.
    func hasEnvironmentValue(for fileKey: String) -> Bool {
        let envName = ConfigurationKeys.environmentName(String(fileKey.dropLast("_file".count)))
        return !(environment[envName]?.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ?? true)
    }

    /// Reads the secret for `fileKey` (e.g. `partner.auth.secret_file`) whose configured file name
    /// is `fileName`; `nil` when neither the env var nor a file name is given.
    func read(fileKey: String, fileName: String?, required: Bool) -> Secret? {
        let envName = ConfigurationKeys.environmentName(String(fileKey.dropLast("_file".count)))
        if let value = environment[envName]?.trimmingCharacters(in: .whitespacesAndNewlines), !value.isEmpty {
            return Secret(value, source: "env \(envName)")
        }
        guard let fileName else {
            if required { recorded.append(.init(fileKey, "required: set the file or \(envName)")) }
            return nil
        }
        let path = resolve(fileName)
        // Found from outside: a 300 MB file was read whole by `reload` (1.26 GB, 36 s of a core)
        // and became the daemon's HS256 key (+308 MB, half a second per token). A secret is a
        // line or a few: anything this large is the wrong file.
        if let size = (try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int, size > Self.maxFileBytes {
            recorded.append(.init(fileKey, "secret file \(path) is \(size) bytes: over \(Self.maxFileBytes / 1024) KiB, not a secret"))
            return nil
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "is not readable" : "does not exist"
            recorded.append(.init(fileKey, "secret file \(path) \(reason)"))
            return nil
        }
        guard let text = String(data: data, encoding: .utf8) else {
            recorded.append(.init(fileKey, "secret file \(path) is not UTF-8 text"))
            return nil
        }
        let value = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if value.isEmpty {
            recorded.append(.init(fileKey, "secret file \(path) is empty"))
            return nil
        }
        return Secret(value, source: "file \(path)")
    }

    /// The largest secret file read (a few keys, one per line, are well under it).
    static let maxFileBytes = 64 << 10

    /// Several secrets, one per line (Standard Webhooks secret rotation); env: whitespace-separated.
    func readList(fileKey: String, fileName: String?) -> [Secret] {
        guard let combined = read(fileKey: fileKey, fileName: fileName, required: false) else { return [] }
        return combined.value
            // `isWhitespace`, not a list of characters: a CRLF line end is one Character, equal to
            // neither "\r" nor "\n", so a file of several CRLF lines was one secret (found from outside).
            .split(whereSeparator: \.isWhitespace)
            .map { Secret(String($0), source: combined.source) }
    }
}
