// The Socket.IO 4.8 peer of issue 20's comparison, run by scripts/bench-peers and loaded
// by `switchboard bench --peer socketio` (BENCHMARKS.md, "Peers: how they are run").
//
// What a small real deployment of Socket.IO does for the same job as Switchboard's edge:
// - the handshake's `auth.token` is an HS256 JWT, checked before the socket joins
//   anything (`sub` is the user; `rooms` may name rooms to join at once);
// - a `subscribe` event joins rooms (a socket may join only its own `user:<sub>` among
//   the `user:` rooms) and is acknowledged, so the client knows it is in them;
// - a `publish` event from a socket whose token says `"publish": true` is broadcast to
//   the room as an `evt` event, through the Redis adapter: with two processes on one
//   Redis, an event published on one reaches the other's sockets through Redis (so do
//   events a backend writes to Redis with @socket.io/redis-emitter: the adapter reads
//   them from the same channel).
//
// GET /stats answers {"sockets": N} so the script can wait for a run's sockets to close.
//
// Environment: PORT (loopback), REDIS_URL, JWT_SECRET (at least 32 bytes).

'use strict';

const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');
const jwt = require('jsonwebtoken');

const port = Number(process.env.PORT);
const redisUrl = process.env.REDIS_URL;
const secret = process.env.JWT_SECRET;
if (!Number.isInteger(port) || !redisUrl || !secret || secret.length < 32) {
  console.error('socketio-server: set PORT, REDIS_URL and JWT_SECRET (at least 32 bytes)');
  process.exit(2);
}

const MAX_ROOMS = 100;
const MAX_ROOM_LENGTH = 200;

const httpServer = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ sockets: io.engine.clientsCount }));
    return;
  }
  res.statusCode = 404;
  res.end();
});

// WebSocket only: the generator opens WebSockets directly, as browsers do once upgraded;
// no compression, as on Switchboard's edge.
const io = new Server(httpServer, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
});

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  let claims;
  try {
    claims = jwt.verify(String(token), secret, { algorithms: ['HS256'] });
  } catch {
    next(new Error('unauthorized'));
    return;
  }
  if (typeof claims.sub !== 'string' || claims.sub === '') {
    next(new Error('unauthorized'));
    return;
  }
  socket.data.user = claims.sub;
  socket.data.publisher = claims.publish === true;
  const rooms = Array.isArray(claims.rooms) ? claims.rooms : [];
  if (!roomsAllowed(claims.sub, rooms)) {
    next(new Error('forbidden'));
    return;
  }
  socket.join(rooms);
  next();
});

// The `user:` rooms are private to their user; any other room is open to every user.
function roomsAllowed(user, rooms) {
  return (
    Array.isArray(rooms) &&
    rooms.length <= MAX_ROOMS &&
    rooms.every(
      (room) =>
        typeof room === 'string' &&
        room !== '' &&
        room.length <= MAX_ROOM_LENGTH &&
        (!room.startsWith('user:') || room === `user:${user}`),
    )
  );
}

io.on('connection', (socket) => {
  socket.on('subscribe', (rooms, ack) => {
    if (typeof ack !== 'function') return;
    if (!roomsAllowed(socket.data.user, rooms)) {
      ack({ error: 'forbidden' });
      return;
    }
    socket.join(rooms);
    ack({ ok: rooms.length });
  });
  socket.on('publish', (room, data) => {
    if (!socket.data.publisher || typeof room !== 'string') return;
    io.to(room).emit('evt', data);
  });
});

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) {
    client.on('error', (e) => console.error('socketio-server: redis:', e.message));
  }
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
  httpServer.listen(port, '127.0.0.1', () => {
    console.log(`socketio-server listening on 127.0.0.1:${httpServer.address().port}`);
  });
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error('socketio-server:', e);
  process.exit(1);
});
