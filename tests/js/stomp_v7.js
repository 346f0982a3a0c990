// @stomp/stompjs 7 over the ws package (Node has no global WebSocket) or
// over sockjs-client (URL `sockjs+TRANSPORT:http://…`):
// `node stomp_v7.js URL SCENARIO [ARGS]`, see stomp_scenarios.js.
'use strict';

const { Client } = require('@stomp/stompjs');
const { run, socketFor } = require('./stomp_scenarios.js');

function connect(url, heartbeat) {
  return new Promise((resolve, reject) => {
    let open = true;
    const client = new Client({
      webSocketFactory: () => socketFor(url, ['v12.stomp', 'v11.stomp', 'v10.stomp']),
      heartbeatIncoming: heartbeat,
      heartbeatOutgoing: heartbeat,
      reconnectDelay: 0,
      onConnect: (frame) => resolve({
        version: frame.headers.version,
        id: Number(frame.headers['user-name']),
        subscribe: (dest, cb) => client.subscribe(dest, (m) => cb({ headers: m.headers, body: m.body })),
        send: (dest, headers, body) => client.publish({ destination: dest, headers, body }),
        isOpen: () => open && client.connected,
        close: () => client.deactivate(),
      }),
      onStompError: (frame) => reject(new Error(`ERROR frame: ${frame.headers.message}`)),
      onWebSocketClose: () => { open = false; },
      onWebSocketError: (e) => reject(new Error(`WebSocket error: ${e.message || e}`)),
    });
    client.activate();
  });
}

run(connect);
