// stompjs 2.3 (`Stomp.over(ws)`, which offers STOMP 1.1 and 1.0) over the
// ws package or sockjs-client (URL `sockjs+TRANSPORT:http://…`): `node stomp_v2.js URL SCENARIO [ARGS]`, see
// stomp_scenarios.js. Its browser build needs Stomp.setInterval and
// clearInterval outside a browser, as its own Node entry defines them.
'use strict';

const { Stomp } = require('stompjs/lib/stomp.js');
const { run, socketFor } = require('./stomp_scenarios.js');

Stomp.setInterval = (ms, f) => setInterval(f, ms);
Stomp.clearInterval = (id) => clearInterval(id);

function connect(url, heartbeat) {
  return new Promise((resolve, reject) => {
    let open = true;
    const ws = socketFor(url, ['v11.stomp', 'v10.stomp']);
    const client = Stomp.over(ws);
    client.debug = null;
    client.heartbeat.outgoing = heartbeat;
    client.heartbeat.incoming = heartbeat;
    ws.addEventListener('close', () => { open = false; });
    client.connect({}, (frame) => resolve({
      version: frame.headers.version,
      id: Number(frame.headers['user-name']),
      subscribe: (dest, cb) => client.subscribe(dest, (m) => cb({ headers: m.headers, body: m.body })),
      send: (dest, headers, body) => client.send(dest, headers, body),
      isOpen: () => open && client.connected,
      close: () => client.disconnect(() => {}),
    }), (err) => reject(new Error(`STOMP error: ${err && err.headers ? err.headers.message : err}`)));
  });
}

run(connect);
