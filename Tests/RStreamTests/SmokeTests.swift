import RStream
import Testing

@Suite struct SmokeTests {
    @Test func greetingBothWays() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        #expect(listener.port != 0)
        let port = listener.port
        let server = Background { () throws -> [UInt8] in
            let stream = try listener.accept(timeout: .seconds(10))
            let got = try stream.receive(maxBytes: 100)
            try stream.sendAll(Array("world".utf8))
            try stream.shutdown()
            var rest = [UInt8](repeating: 0, count: 16)
            #expect(try stream.receive(into: &rest) == 0)
            stream.close()
            return got
        }
        let client = try StreamConnection.connect(host: "127.0.0.1", port: port, options: loopbackOptions())
        try client.sendAll(Array("hello".utf8))
        var reply: [UInt8] = []
        while true {
            let chunk = try client.receive(maxBytes: 100)
            if chunk.isEmpty { break }
            reply += chunk
        }
        try client.shutdown()
        try client.flush(timeout: .seconds(10))
        client.close()
        #expect(String(decoding: reply, as: UTF8.self) == "world")
        #expect(String(decoding: try server.value(), as: UTF8.self) == "hello")
    }
}
