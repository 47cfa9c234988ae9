// Subscribes to an ssed stream with the npm `eventsource` package (pinned in package.json) and prints
// what it sees, one JSON object per line, so the Rust test (tests/it/external) can follow along.
//
// Usage: node client.mjs URL [TOKEN]
//   With TOKEN, every request carries `Authorization: Bearer TOKEN` (the package has no headers
//   option: a fetch wrapper is how its users add one).
//   {"type":"connect","lastEventId":null|"N"}  each time the library starts a request, with the
//                                               Last-Event-ID header it sends (seen through its fetch hook)
//   {"type":"open"}                            each time a response was accepted
//   {"type":"message","id":"N","event":"message","data":"..."}
//   {"type":"gap","id":"","data":"..."}        an `ssed-gap` event
//   {"type":"error","readyState":0|2}          a lost connection (0: will reconnect, 2: gave up)
//   {"type":"done","id":"N","data":"..."}      an event of type `done`: the script closes and exits 0
import { EventSource } from 'eventsource';

const url = process.argv[2];
const token = process.argv[3];
if (!url) {
  console.error('usage: node client.mjs URL [TOKEN]');
  process.exit(2);
}

function emit(record) {
  process.stdout.write(JSON.stringify(record) + '\n');
}

function headerOf(headers, name) {
  if (!headers) return null;
  if (typeof headers.get === 'function') return headers.get(name);
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() === name.toLowerCase()) return value;
  }
  return null;
}

const source = new EventSource(url, {
  fetch: (input, init) => {
    emit({ type: 'connect', lastEventId: headerOf(init && init.headers, 'last-event-id') ?? null });
    if (token) {
      return fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } });
    }
    return fetch(input, init);
  },
});

source.onopen = () => emit({ type: 'open' });
source.onmessage = (e) => emit({ type: 'message', id: e.lastEventId, event: e.type, data: e.data });
source.addEventListener('ssed-gap', (e) => emit({ type: 'gap', id: e.lastEventId, data: e.data }));
source.addEventListener('done', (e) => {
  emit({ type: 'done', id: e.lastEventId, data: e.data });
  source.close();
  // Let stdout drain before exiting.
  process.stdout.write('', () => process.exit(0));
});
source.onerror = (e) => emit({ type: 'error', readyState: source.readyState, message: String((e && e.message) || '') });

// A test that overruns kills this process; this is only a last resort so nothing is left behind.
setTimeout(() => {
  emit({ type: 'timeout' });
  process.exit(3);
}, 60_000).unref();
