import CandidateRelayTesting
import Foundation
import Synchronization
import Testing
@testable import CandidateRelay
#if canImport(Glibc)
import Glibc
#endif

/// Log lines and command output whose reader is gone, or slow: never a crash, never a torn line.
@Suite(.serialized) struct StandardStreamTests {
    /// A pipe: (read end, write end).
    static func pipePair() throws -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw POSIXError(.EMFILE) }
        return (fds[0], fds[1])
    }

    /// Foundation's `FileHandle.write` trapped on EPIPE: a shipper reading the daemon's stdout
    /// that exited took the daemon down at its next log line.
    @Test func aLineToAReaderThatIsGoneIsDroppedAndCounted() throws {
        signal(SIGPIPE, SIG_IGN)  // as `serve` does: the write then fails with EPIPE
        let (reader, writer) = try Self.pipePair()
        defer { close(writer) }
        close(reader)
        let metrics = RelayMetrics()
        _ = metrics.exposition()  // what earlier tests of this process dropped is counted here
        let before = LogOutput.droppedLines
        let output = LogOutput.descriptor(writer)
        output.write("{\"event\":\"one\"}\n")
        output.write("{\"event\":\"two\"}\n")
        #expect(output.flush(timeoutSeconds: 10))
        #expect(LogOutput.droppedLines == before + 2)
        #expect(!StandardStream.write("text\n", to: writer))
        #expect(metrics.exposition().contains("candidate_relay_log_lines_dropped_total 2"))
    }

    /// A stdout left non-blocking by whoever started the process: a full pipe is waited out, as
    /// a blocking one would be, and the line arrives whole.
    @Test func aNonBlockingOutputThatIsFullIsWaitedForNotDropped() async throws {
        let (reader, writer) = try Self.pipePair()
        defer { close(reader); close(writer) }
        _ = fcntl(writer, F_SETFL, fcntl(writer, F_GETFL) | O_NONBLOCK)
        let filler = [UInt8](repeating: UInt8(ascii: "x"), count: 4096)
        var filled = 0
        while true {
            let n = filler.withUnsafeBytes { Glibc.write(writer, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            filled += n
        }
        #expect(errno == EAGAIN)
        let before = LogOutput.droppedLines
        let line = "{\"event\":\"after the full pipe\"}\n"
        // Its writer thread blocks (in poll) until the reader below makes room.
        let written = DispatchSemaphore(value: 0)
        Thread {
            let output = LogOutput.descriptor(writer)
            output.write(line)
            output.flush(timeoutSeconds: 20)
            written.signal()
        }.start()
        try await Task.sleep(for: .milliseconds(100))
        // The reader never blocks: a line dropped instead of waited for ends the loop at the
        // deadline, and the test fails rather than hangs.
        _ = fcntl(reader, F_SETFL, fcntl(reader, F_GETFL) | O_NONBLOCK)
        var received = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let deadline = Date().addingTimeInterval(10)
        while received.count < filled + line.utf8.count && Date() < deadline {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(reader, $0.baseAddress, $0.count) }
            if n > 0 { received += buffer[0..<n] } else { try await Task.sleep(for: .milliseconds(5)) }
        }
        #expect(written.wait(timeout: .now() + 10) == .success)
        #expect(String(decoding: received.suffix(line.utf8.count), as: UTF8.self) == line)
        #expect(LogOutput.droppedLines == before)
    }

    /// Found from outside: a stdout nobody read (a stalled journald, a shipper applying
    /// back-pressure) blocked every log call, and with it ingest, `/healthz`, delivery, the
    /// watchdog and SIGTERM. Now only the output's own thread waits; lines past its queue are
    /// dropped and counted; once the reader reads again, the queued lines arrive whole, in order.
    @Test func aReaderThatStopsReadingDelaysNoWriterAndCostsOnlyTheLinesPastTheQueue() async throws {
        let (reader, writer) = try Self.pipePair()
        defer { close(reader); close(writer) }
        let capacity = 256 << 10  // 4 MiB in the daemon
        let output = LogOutput.descriptor(writer, queueCapacityBytes: capacity)
        let before = LogOutput.droppedLines
        let lines = capacity / 1024 + 64 + 200  // the queue, the pipe's 64 KiB, and more
        // On a thread of its own, with a deadline: writes that block fail the test, not hang it.
        let done = DispatchSemaphore(value: 0)
        Thread {
            for n in 0..<lines { output.write(String(format: "%08d", n) + String(repeating: "x", count: 1015) + "\n") }
            done.signal()
        }.start()
        #expect(done.wait(timeout: .now() + 30) == .success)
        let dropped = LogOutput.droppedLines - before
        #expect(dropped > 0)
        _ = fcntl(reader, F_SETFL, fcntl(reader, F_GETFL) | O_NONBLOCK)
        var received = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let deadline = Date().addingTimeInterval(30)
        while received.count < (lines - dropped) * 1024 && Date() < deadline {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(reader, $0.baseAddress, $0.count) }
            if n > 0 { received += buffer[0..<n] } else { try await Task.sleep(for: .milliseconds(5)) }
        }
        #expect(output.flush(timeoutSeconds: 10))
        let got = String(decoding: received, as: UTF8.self).split(separator: "\n")
        #expect(got.count == lines - dropped)
        #expect(got.allSatisfy { $0.utf8.count == 1023 && $0.hasSuffix(String(repeating: "x", count: 1015)) })
        let numbers = got.compactMap { Int($0.prefix(8)) }
        #expect(numbers == numbers.sorted() && numbers.first == 0)
    }

    /// At exit the queue is waited for as long as the reader reads, however slowly (found from
    /// outside: a fixed 2 s cut a slow reader's log short, `relay.stopped` and all, without a
    /// word); a reader that reads nothing costs the lines left, counted.
    @Test func aFlushWaitsForASlowReaderAndGivesUpOnAStalledOne() async throws {
        let (reader, writer) = try Self.pipePair()
        defer { close(reader); close(writer) }
        let output = LogOutput.descriptor(writer)
        let line = String(repeating: "s", count: 1023) + "\n"
        for _ in 0..<512 { output.write(line) }  // 512 KiB: 8 pipes full
        // A slow reader: 4 KiB every 20 ms, ~0.2 MB/s, so about 2.6 s in all, past the flush's
        // 1 s without progress but never 1 s without reading.
        let stop = Atomic<Bool>(false)
        let received = Atomic<Int>(0)
        let slow = Thread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !stop.load(ordering: .relaxed) && received.load(ordering: .relaxed) < 512 * 1024 {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(reader, $0.baseAddress, $0.count) }
                if n > 0 { received.add(n, ordering: .relaxed) }
                usleep(20_000)
            }
        }
        slow.start()
        let before = LogOutput.droppedLines
        #expect(output.flush(timeoutSeconds: 1))
        // All written; the reader takes the last pipe's worth after.
        #expect(await eventually(timeout: 10) { received.load(ordering: .relaxed) == 512 * 1024 })
        #expect(LogOutput.droppedLines == before)
        stop.store(true, ordering: .relaxed)

        // Nobody reads now: the pipe fills, and the flush gives up, counting what is left.
        for _ in 0..<200 { output.write(line) }
        #expect(!output.flush(timeoutSeconds: 0.3))
        #expect(LogOutput.droppedLines > before)
    }
}
