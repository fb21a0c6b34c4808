import RStream

/// An echo server and its client in one program, with async/await: no thread per connection,
/// and an idle task costs nothing while it waits. (In an async function: at the top level of
/// `main.swift` Swift would pick the blocking overloads.)
@main struct AsyncEcho {
    static func main() async throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0)
        let server = Task {
            let stream = try await listener.accept()
            for try await chunk in stream.chunks() {       // ends at the client's FIN
                try await stream.sendAll(chunk)
            }
            try stream.shutdown()
            await stream.close()
        }

        let client = try await StreamConnection.connect(host: "127.0.0.1", port: listener.port)
        let message = Array("hello, streams".utf8)
        try await client.sendAll(message)
        try client.shutdown()                               // FIN after every byte
        var echoed: [UInt8] = []
        for try await chunk in client.chunks() { echoed += chunk }
        try await server.value
        print("echoed \(echoed.count) bytes over \(client.transport): \(String(decoding: echoed, as: UTF8.self))")
        await client.close()
        listener.close()
    }
}
