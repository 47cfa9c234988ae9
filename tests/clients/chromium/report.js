// The pages' one way back to the test: report(record) appends the record to the page's <pre id="log">
// and POSTs it to the page's own server (the test), one JSON object per request, strictly one after
// another so the test receives them in the order they happened. Served as /report.js by the tests'
// page server (tests/it/external/chromium.rs).
'use strict';
let seq = 0;
let chain = Promise.resolve();
function report(record) {
  const log = document.getElementById('log');
  record.seq = seq++;
  const body = JSON.stringify(record);
  log.textContent += body + '\n';
  chain = chain
    .then(() => fetch('/report', { method: 'POST', body, headers: { 'Content-Type': 'text/plain' } }))
    .catch((e) => { log.textContent += 'report failed: ' + e + '\n'; });
}
