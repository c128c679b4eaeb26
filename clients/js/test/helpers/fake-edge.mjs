// A scripted edge for unit tests of the client's state machine: it speaks just enough of
// switchboard.v1 to put the client in situations a healthy real edge never creates on
// demand (a duplicate on the wire, a refused token mid-session, a stream reset).
// Everything a real edge does is tested against the real stack in test/integration.
import { WebSocketServer } from 'ws';

/** The client side of `ws`, for tests in other folders (clients/react) that reach `ws` through here. */
export { default as WebSocket } from 'ws';

export async function fakeEdge(script = {}) {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'switchboard.v1' });
  await new Promise((resolve) => server.once('listening', resolve));
  const { port } = server.address();
  const edge = {
    url: `ws://127.0.0.1:${port}/v1/ws`,
    /** Every client frame received, with the connection number. */
    frames: [],
    connections: 0,
    sockets: new Set(),
    close: () =>
      new Promise((resolve) => {
        for (const socket of edge.sockets) socket.terminate();
        server.close(() => resolve());
      }),
  };
  server.on('connection', (socket) => {
    const conn = ++edge.connections;
    edge.sockets.add(socket);
    socket.on('close', () => edge.sockets.delete(socket));
    const send = (frame) => socket.send(JSON.stringify(frame));
    socket.on('message', (data) => {
      const frame = JSON.parse(data.toString());
      edge.frames.push({ conn, ...frame });
      const handler = script[frame.op];
      if (handler) {
        handler(frame, { send, socket, conn });
        return;
      }
      // Defaults: welcome any hello, ok every request, pong pings.
      if (frame.op === 'hello') send({ op: 'welcome', user: 'u1', session: `s${conn}`, heartbeat_ms: 25000 });
      else if (frame.op === 'ping') send({ op: 'pong', id: frame.id });
      else if (frame.op === 'sub') send({ op: 'ok', id: frame.id, ch: frame.ch, seq: 0, epoch: 'e1', recovered: true });
      else if (frame.id !== undefined) send({ op: 'ok', id: frame.id });
    });
  });
  return edge;
}

/** A token whose only readable part is its claims (the fake edge checks nothing). */
export function fakeToken(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${b64({ alg: 'HS256' })}.${b64(claims)}.sig`;
}
