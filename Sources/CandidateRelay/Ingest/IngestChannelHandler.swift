import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization

/// The live server's HTTP/1 connection: Hummingbird's, with `IngestChannelHandler` answering the
/// webhook on the event loop. Every other request goes on to the router as before.
struct RelayHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let inner: HTTP1Channel
    let ingest: IngestHandler
    let serverName: String
    /// One for the server: its log line is throttled across connections.
    let slowBodies: SlowBodyLog

    /// Hummingbird's `.http1(...)` with the ingest handler in each connection's pipeline.
    static func builder(ingest: IngestHandler, serverName: String, bodyDeadline: BodyDeadlinePolicy,
                        configuration: HTTP1Channel.Configuration) -> HTTPServerBuilder {
        HTTPServerBuilder { responder in
            RelayHTTP1Channel(inner: HTTP1Channel(responder: responder, configuration: configuration),
                              ingest: ingest, serverName: serverName, slowBodies: SlowBodyLog(logger: ingest.logger, policy: bodyDeadline))
        }
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            // After the connection-state handler (idle timeout, close after the last answer when
            // the server quiesces), which must count these requests too; before the router.
            let operations = channel.pipeline.syncOperations
            let state = try operations.handler(type: HTTPConnectionStateHandler.self)
            let handler = IngestChannelHandler(ingest: ingest, serverName: serverName)
            try operations.addHandler(handler, position: .after(state))
            // Before the connection-state handler, which keeps the server's stop to itself.
            try operations.addHandler(StopWatcher(ingest: handler), position: .before(state))
            // Anywhere before the ingest handler (which keeps the webhook's parts to itself): it
            // times every request, the webhook and the router's alike.
            let slowBodies = self.slowBodies
            try operations.addHandler(BodyDeadlineHandler(policy: slowBodies.policy) { slowBodies.report() }, position: .before(state))
            // Before the conversion to HTTPTypes, which drops the version and keeps only the first `Host`.
            try operations.addHandler(RequestHeadRules(), position: .before(operations.handler(type: HTTP1ToHTTPServerCodec.self)))
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
    }
}

/// `POST /v1/candidates` and `POST /v1/accounts/{account}/candidates`, answered on the
/// connection's event loop: the body is collected there, checked (`IngestHandler.prepare`),
/// handed to the outbox's group commit, and the answer written from the loop once the commit
/// holding the event returned. A 202 still means "fsync'd".
///
/// Why not through the router: there, each request crossed from the event loop to a task, read
/// its body as an async sequence, waited in a continuation for the commit and crossed back to
/// be written; here it stays on its loop but for the commit. About a tenth less CPU per request
/// (docs/performance.md). The router's `accept` keeps the same steps for in-process tests.
///
/// HTTP/1.1 allows a client to pipeline requests. Answers must go out in request order, so
/// while a webhook is being stored (or a request the router answers is still open before a
/// webhook), later parts are held until the answer before them is out, and once one is held no
/// more is read (`readsWait`).
final class IngestChannelHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private enum State {
        /// Between requests.
        case idle
        /// A request for the router: its parts go on.
        case passing
        /// A webhook's body being collected (into `body`).
        case reading(account: String, headers: WebhookHeaders, limit: Int)
        /// A whole webhook being checked and stored; its answer is not out yet.
        case storing(closeAfter: Bool)
        /// Refused before the end of its body (413, 404, 401, 503): answered; the rest of the body
        /// is read and dropped (closing with unread bytes would reset the connection, and the
        /// client would likely never read the answer), then the next request.
        case discarding(closeAfter: Bool)
        /// Answered, and the connection is closing.
        case closing
    }

    /// Bodies larger than this are checked on a task, not on the event loop, which serves
    /// other connections meanwhile (parsing 25 MB takes tens of milliseconds).
    static let inlineCheckBytes = 1 << 20

    private let ingest: IngestHandler
    private let serverName: String
    private var context: ChannelHandlerContext?
    private var state = State.idle
    /// The body of the webhook being read: kept out of `state` so that it grows in place.
    private var body = Data()
    /// What `body` holds of the ingest-wide budget (`IngestHandler.reserveBody`): the bytes that
    /// arrived beyond the first `freeBodyBytes`, until the webhook is answered.
    private var bodyReserved = 0
    /// Every body's first bytes are not counted: a webhook of usual size (a few KB) is never
    /// refused for the budget, whoever holds it.
    static let freeBodyBytes = 64 << 10
    /// The last answer's write, when the connection is to close after it (`closeAfterAnswer`).
    private var answerWritten: EventLoopFuture<Void>?
    /// How long a closing connection waits for its answer to be written.
    static let closeWaitSeconds: Int64 = 10
    /// Requests passed to the router whose answer's end has not been written yet.
    private var routerAnswersOwed = 0
    /// A webhook waits (held) for the router's answers before it.
    private var waitingForRouter = false
    /// What arrived while blocked, in order: request parts, a parse error, and events such as
    /// the client's half-close, which the router must see after the requests before it, not
    /// ahead of them. (Found from outside: a parse error was held apart and passed on after
    /// everything else, so a half-close behind it closed the connection first and its 400 was
    /// never sent.)
    private enum Held {
        case part(HTTPRequestPart)
        case event(Any)
        case error(any Error)
    }
    private var held = CircularBuffer<Held>()
    /// A parse error is held; only the first is passed on (it ends the connection: the router
    /// answers it with a 400 and closes).
    private var errorHeld = false
    private var heldRead = false
    private var heldClose: (mode: CloseMode, promise: EventLoopPromise<Void>?)?
    /// Parts passed on to the router so far.
    private var forwarded = 0
    /// The connection takes more output. While it does not (a client that pipelines webhooks
    /// and reads no answers), nothing more is read: the answers wait in the kernel, not in
    /// memory here. The router's side does the same through its async channel.
    private var writable = true
    /// Requests the router may be answering at once on one connection; past it, reads wait.
    /// Found from outside: a client pipelining `GET /metrics` and reading no answer had ~1,300
    /// requests read and parsed ahead (~1.4 MB of the daemon's memory a connection; 200 such
    /// connections took it past 320 MB), as the router's own back-pressure comes only once the
    /// answers fill the socket.
    static let routerReadAhead = 16
    /// A connection that took no output for this long is closed (found from outside: one whose
    /// client read nothing was held for good, its answers in the kernel; the idle timeout does
    /// not run while an answer is being written). RFC 9112 §9.5 lets a server close it.
    static let stalledOutputSeconds: Int64 = 60
    private var stalledOutput: Scheduled<Void>?

    init(ingest: IngestHandler, serverName: String) {
        self.ingest = ingest
        self.serverName = serverName
    }

    /// No part is processed now: one is being stored, one waits for the router's answers, or
    /// the answers before it are not taken.
    private var isBlocked: Bool {
        switch state {
        case .storing, .closing: true
        default: waitingForRouter || !writable
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        writable = context.channel.isWritable
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        writable = context.channel.isWritable
        if writable {
            stalledOutput?.cancel()
            stalledOutput = nil
        } else if stalledOutput == nil {
            let channel = context.channel
            stalledOutput = context.eventLoop.scheduleTask(in: .seconds(Self.stalledOutputSeconds)) { channel.close(promise: nil) }
        }
        context.fireChannelWritabilityChanged()
        if writable { resume(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stalledOutput?.cancel()
        stalledOutput = nil
        self.context = nil
        // A connection closed part-way through a body: its share of the budget goes back.
        dropBody()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if isBlocked || !held.isEmpty {
            if case .closing = state { return }
            held.append(.part(part))
            return
        }
        process(part, context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if isBlocked || !held.isEmpty {
            if case .closing = state { return }
            held.append(.event(event))
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func read(context: ChannelHandlerContext) {
        if readsWait { heldRead = true } else { context.read() }
    }

    /// No more is read now. While a webhook is stored and nothing came after it, reading goes on:
    /// a client that waits for each answer (almost every client) sends nothing meanwhile, and
    /// stopping reads for every webhook then starting them again cost two `epoll_ctl` calls per
    /// request (~2 % of ingest's CPU). Once anything is held (the client pipelines, or an error
    /// waits), reads wait for its turn, so what a connection holds stays one read's worth, as
    /// before. A webhook after which the connection closes (`Connection: close`, the server's
    /// stop) reads nothing more: it would only be dropped.
    private var readsWait: Bool {
        if routerAnswersOwed >= Self.routerReadAhead { return true }
        if case .storing(closeAfter: false) = state, held.isEmpty, writable { return false }
        return isBlocked
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The router answers a parse error (400, then close): after the answers owed before it.
        if isBlocked || !held.isEmpty {
            if case .closing = state { return }
            if !errorHeld { held.append(.error(error)) }
            errorHeld = true
        } else {
            context.fireErrorCaught(error)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let part = unwrapOutboundIn(data)
        context.write(data, promise: promise)
        if case .end = part {
            routerAnswersOwed = max(0, routerAnswersOwed - 1)
            if routerAnswersOwed == 0 && waitingForRouter {
                waitingForRouter = false
                resume(context: context)
            } else if heldRead, !readsWait {
                // Below `routerReadAhead` again.
                heldRead = false
                context.read()
            }
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // The router closes when its side of the connection is done (the client closed its
        // sending half, say): a webhook being stored still gets its answer first.
        if case .storing = state {
            heldClose = (mode, promise)
        } else {
            context.close(mode: mode, promise: promise)
        }
    }

    // MARK: - Requests

    private func process(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        switch state {
        case .idle:
            if case .head(let head) = part, let account = Self.ingestAccount(head) {
                if routerAnswersOwed > 0 {
                    waitingForRouter = true
                    held.prepend(.part(part))  // first again: it may have come from the front of `held`
                } else {
                    begin(head, account: account, context: context)
                }
                return
            }
            if case .head = part {
                routerAnswersOwed += 1
                state = .passing
            }
            forward(part, context: context)
        case .passing:
            if case .end = part { state = .idle }
            forward(part, context: context)
        case .reading(let account, let headers, let limit):
            switch part {
            case .body(let chunk):
                if body.count + chunk.readableBytes > limit {
                    dropBody()
                    refuse(.payloadTooLarge(limit: limit), account: account, headers: headers, bodyComing: true, context: context)
                    return
                }
                guard ingest.reserveBody(holding: body.count + chunk.readableBytes, reserved: &bodyReserved) else {
                    dropBody()
                    refuse(Self.tooManyBodies, account: account, headers: headers, bodyComing: true, context: context, close: true)
                    return
                }
                chunk.withUnsafeReadableBytes { body.append(contentsOf: $0) }
            case .end:
                // The budget's share stays taken until the answer: the body lives on until then.
                let whole = body
                body = Data()
                store(account: account, headers: headers, body: whole, context: context)
            case .head:
                break  // the decoder sends no head before the end of the one before
            }
        case .discarding(let closeAfter):
            guard case .end = part else { return }
            state = .idle
            if closeAfter { closeAfterAnswer(context: context) }
        case .storing, .closing:
            break  // nothing is processed while blocked (`channelRead` holds it)
        }
    }

    private func forward(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        forwarded &+= 1
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// A webhook's head: what can be refused before its body is, and `100 Continue` when the
    /// client waits for it (curl does for bodies over 1 KB).
    private func begin(_ head: HTTPRequest, account: String, context: ChannelHandlerContext) {
        let limit = ingest.settings.value.maxBodyBytes
        let headers = WebhookHeaders(head.headerFields)
        let declared = headers.declaredLength
        do throws(IngestError) {
            try ingest.admitHead(account: account, headers: headers)
        } catch {
            refuse(error, account: account, headers: headers, bodyComing: !headers.expectsContinue, context: context)
            return
        }
        dropBody()
        // Address space only: pages count (and the budget with them) as bytes arrive. Counting
        // a declared length at the head let three connections that sent nothing hold the
        // whole budget.
        if let declared, declared > 0 { body.reserveCapacity(declared) }
        if headers.expectsContinue {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
        }
        state = .reading(account: account, headers: headers, limit: limit)
    }

    /// Bodies being read on all connections hold the whole ingest budget.
    static let tooManyBodies = IngestError.unavailable(reason: "too many webhook bodies being received at once", retryAfterSeconds: 1)

    /// Empties `body` and gives back its share of the budget.
    private func dropBody() {
        body = Data()
        ingest.releaseBody(bodyReserved)
        bodyReserved = 0
    }

    /// Answers before the end of the body. A body still coming is read and dropped; a client
    /// waiting for `100 Continue` sends none, and the connection closes (it cannot tell the
    /// server that it will not send it). `close`: close after the rest of the body anyway.
    private func refuse(_ error: IngestError, account: String, headers: WebhookHeaders, bodyComing: Bool, context: ChannelHandlerContext,
                        close: Bool = false) {
        let closeAfter = close || !bodyComing || headers.asksToClose
        send(ingest.finish(.failure(error), account: account), close: closeAfter, context: context)
        if bodyComing {
            state = .discarding(closeAfter: closeAfter)
        } else {
            closeAfterAnswer(context: context)
        }
    }

    /// Closes after the last answer; nothing more is read.
    private func closeAfterAnswer(context: ChannelHandlerContext) {
        state = .closing
        held.removeAll()
        // A close the router asked for meanwhile is this one (its promise must complete).
        let promise = heldClose?.promise
        heldClose = nil
        // Once the answer is written: NIO fails the writes still pending when a channel closes,
        // and an answer larger than the socket's buffer (a 422 listing many fields) was cut
        // short (found from outside). A client that does not read it is closed anyway after
        // `closeWaitSeconds` (the idle timeout does not fire while a pipelined request behind
        // the webhook counts as being answered).
        guard let written = answerWritten else {
            context.close(promise: promise)
            return
        }
        answerWritten = nil
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let forced = context.eventLoop.scheduleTask(in: .seconds(Self.closeWaitSeconds)) { bound.value.close(promise: nil) }
        written.whenComplete { _ in
            forced.cancel()
            bound.value.close(promise: promise)
        }
    }

    /// The server is stopping (its quiesce event). A webhook whose body is still coming is
    /// answered 503 now and the connection closed: the rest of its body (a slow or stalled
    /// sender) must not hold the daemon's exit. One being stored is answered, then the
    /// connection closes; anything pipelined after it is not processed (nor read, but for a
    /// read already under way: `readsWait`). Requests the router has
    /// are the connection-state handler's: it closes after their answers.
    fileprivate func stop() {
        guard let context else { return }
        switch state {
        case .reading(let account, _, _):
            dropBody()
            send(ingest.finish(.failure(.unavailable(reason: "shutting down", retryAfterSeconds: 5)), account: account),
                 close: true, context: context)
            closeAfterAnswer(context: context)
        case .discarding:
            closeAfterAnswer(context: context)
        case .storing:
            state = .storing(closeAfter: true)
        case .idle, .passing, .closing:
            break
        }
    }

    /// A whole webhook: checked, then stored by the group commit; answered on this loop.
    private func store(account: String, headers: WebhookHeaders, body: Data, context: ChannelHandlerContext) {
        state = .storing(closeAfter: headers.asksToClose)
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        if body.count > Self.inlineCheckBytes {
            let check: @Sendable () -> Void = { [ingest] in
                Self.check(ingest, account: account, headers: headers, body: body, loop: loop, handler: handler)
            }
            Task { check() }
        } else {
            Self.check(ingest, account: account, headers: headers, body: body, loop: loop, handler: handler)
        }
    }

    /// The checks, then the group commit. The answer is made on the loop (metrics, the doorbell,
    /// the log line), not on the group commit's drain, which goes on to the next batch; the
    /// completion carries no more than it needs across (each capture is a retain and a release
    /// on SQLite's writer queue, which every request waits for).
    private static func check(_ ingest: IngestHandler, account: String, headers: WebhookHeaders, body: Data,
                              loop: any EventLoop, handler: NIOLoopBound<IngestChannelHandler>) {
        let prepared: IngestHandler.Prepared
        do throws(IngestError) {
            prepared = try ingest.prepare(account: account, headers: headers, body: body)
        } catch {
            loop.execute { handler.value.answered(.failure(error), account: account) }
            return
        }
        let generated = prepared.generated
        ingest.outbox.accept(prepared.submission, maxBacklog: prepared.maxBacklog) { stored in
            loop.execute {
                let handler = handler.value
                handler.answered(handler.ingest.answer(stored, account: account, generated: generated), account: account)
            }
        }
    }

    private func answered(_ outcome: Result<IngestHandler.StoredAnswer, IngestError>, account: String) {
        answered(ingest.finish(outcome, account: account))
    }

    /// The stored webhook's answer, on the loop: written, then whatever waited for it.
    private func answered(_ answer: IngestAnswer) {
        dropBody()  // its share of the budget, kept while it was checked and stored
        guard let context, case .storing(let closeAfter) = state else { return }
        send(answer, close: closeAfter, context: context)
        if closeAfter {
            closeAfterAnswer(context: context)
            return
        }
        state = .idle
        if let close = heldClose {
            heldClose = nil
            context.close(mode: close.mode, promise: close.promise)
        }
        resume(context: context)
    }

    /// Processes what was held, in order, until a part blocks again; then the held read.
    private func resume(context: ChannelHandlerContext) {
        let forwardedBefore = forwarded
        while !isBlocked, self.context != nil, let next = held.popFirst() {
            switch next {
            case .part(let part): process(part, context: context)
            case .event(let event): context.fireUserInboundEventTriggered(event)
            case .error(let error): context.fireErrorCaught(error)
            }
        }
        // The router's end of the pipeline hands reads on at the end of a read cycle: parts
        // passed on outside one need a read-complete of their own.
        if forwarded != forwardedBefore, self.context != nil { context.fireChannelReadComplete() }
        guard self.context != nil else { return }
        // Also when the held parts made a webhook that is now being stored (`readsWait`).
        if heldRead, !readsWait {
            heldRead = false
            context.read()
        }
    }

    private func send(_ answer: IngestAnswer, close: Bool, context: ChannelHandlerContext) {
        var headers = answer.headers
        // Appended, not set: an answer carries none of these (the setter looked for each first).
        headers.reserveCapacity(headers.count + 4)
        headers.append(HTTPField(name: .contentLength, value: String(answer.body.readableBytes)))
        headers.append(HTTPField(name: .date, value: HTTPDate.now()))
        headers.append(HTTPField(name: .server, value: serverName))
        if close { headers.append(HTTPField(name: .connection, value: "close")) }
        context.write(wrapOutboundOut(.head(HTTPResponse(status: answer.status, headerFields: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(answer.body)), promise: nil)
        let written = close ? context.eventLoop.makePromise(of: Void.self) : nil
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: written)
        if let written { answerWritten = written.futureResult }
    }

    /// The account a request posts a webhook to, or nil when the router is to answer it: only
    /// `POST /v1/candidates` and `POST /v1/accounts/<name>/candidates` (query ignored, as the
    /// router does). Empty segments are skipped as the router skips them (`/v1/candidates/`,
    /// `//v1/candidates`): such a spelling taken by the router read its body outside the body
    /// budget and without `100 Continue` (found from outside: twelve stalled 24 MB bodies
    /// posted to `/v1/candidates/` held 290 MB). A path with an escape goes to the router,
    /// which matches it to no account (ids are `[a-z0-9_-]`): 404. The router's own reading is
    /// budgeted all the same (`IngestHandler.readBody`).
    static func ingestAccount(_ head: HTTPRequest) -> String? {
        guard head.method == .post, let target = head.path else { return nil }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        if path == "/v1/candidates" { return AccountConfiguration.defaultID }
        guard path.first == "/", !path.contains("%") else { return nil }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        if parts.count == 2, parts[0] == "v1", parts[1] == "candidates" { return AccountConfiguration.defaultID }
        guard parts.count == 4, parts[0] == "v1", parts[1] == "accounts", parts[3] == "candidates" else { return nil }
        return String(parts[2])
    }
}

/// Sees the server's stop (`ChannelShouldQuiesceEvent`) before the connection-state handler
/// takes it, tells the webhook handler, and closes the connection if it is still open a few
/// seconds later: a client that sends a body (to any path) a byte at a time, or reads its
/// answer that way, must not hold the daemon's exit. (The router's quiesce waits for the
/// current request's answer, however long its body takes to arrive.)
final class StopWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    /// How long a connection may still take to finish once the server stops.
    static let closeAfter = TimeAmount.seconds(3)

    private let ingest: IngestChannelHandler
    private var deadline: Scheduled<Void>?

    init(ingest: IngestChannelHandler) {
        self.ingest = ingest
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, deadline == nil {
            let channel = context.channel
            deadline = context.eventLoop.scheduleTask(in: Self.closeAfter) { channel.close(promise: nil) }
            ingest.stop()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }
}

/// The `Date` header's text (RFC 9110's IMF-fixdate), made once a second.
enum HTTPDate {
    private static let cache = Mutex<(second: Int, text: String)>((-1, ""))

    static func now() -> String {
        var seconds = time(nil)
        let second = Int(seconds)
        if let text = cache.withLock({ $0.second == second ? $0.text : nil }) { return text }
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let text = "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
        cache.withLock { $0 = (second, text) }
        return text
    }
}
