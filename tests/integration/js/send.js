'use strict';
// Sends messages on one sender link and reports each outcome.
// argv[2] JSON: {connection:{host,port,tls,ca,username,password}, address,
//   messages:[{id, body_b64 | text, properties, annotations}], generate, presettled, timeout_ms}
// prints {accepted:[ids], rejected:[], released:[], modified:[], opened:bool,
//   connection_error, link_error, disconnected}
const { rhea, args, connect_options, condition, finisher } = require('./common');

const a = args();
const result = { accepted: [], rejected: [], released: [], modified: [], opened: false,
                 connection_error: null, link_error: null, disconnected: null };
const finish = finisher(result);
// {generate: {count, prefix, size}} makes `count` messages of `size` random bytes (load)
const msgs = a.messages || [];
if (a.generate) {
  const crypto = require('crypto');
  for (let i = 0; i < a.generate.count; i++) {
    msgs.push({ id: a.generate.prefix + i, body_b64: crypto.randomBytes(a.generate.size || 64).toString('base64') });
  }
}
let next = 0;
let settled = 0;
const container = rhea.create_container({ id: 'rhea-send' });
const conn = container.connect(connect_options(a.connection));
const sender = conn.open_sender(a.presettled ? { target: a.address, snd_settle_mode: 1 } : a.address);

setTimeout(() => finish({ timeout: true }), a.timeout_ms || 10000);

function maybe_done() {
  if (settled === msgs.length) conn.close();
}

conn.on('connection_open', () => { result.opened = true; });
sender.on('sendable', () => {
  while (sender.sendable() && next < msgs.length) {
    const m = msgs[next++];
    const out = { message_id: m.id };
    if (m.body_b64 !== undefined) out.body = rhea.message.data_section(Buffer.from(m.body_b64, 'base64'));
    else out.body = m.text;
    if (m.properties) out.application_properties = m.properties;
    if (m.annotations) out.message_annotations = m.annotations;
    const d = sender.send(out);
    d.wd_id = m.id;
    if (a.presettled) { settled++; }
  }
  if (a.presettled && next === msgs.length) setTimeout(() => conn.close(), 200);
});
for (const outcome of ['accepted', 'rejected', 'released', 'modified']) {
  sender.on(outcome, (ctx) => { result[outcome].push(ctx.delivery.wd_id); settled++; maybe_done(); });
}
sender.on('sender_error', (ctx) => { result.link_error = condition(ctx.sender.error); conn.close(); });
conn.on('connection_error', (ctx) => { result.connection_error = condition(ctx.error || ctx.connection.error); });
conn.on('connection_close', () => finish());
conn.on('disconnected', (ctx) => finish({ disconnected: condition(ctx.error) || true }));
conn.on('error', (e) => finish({ error: String(e) }));
