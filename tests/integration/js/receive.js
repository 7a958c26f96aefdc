'use strict';
// Receives from one address, accepting each message, until `count` messages (from
// `device`, if given, by x-opt-device-id) were seen, or `idle_ms` passed without one,
// or timeout.
// argv[2] JSON: {connection, address, count, device, credit, idle_ms, timeout_ms}
// prints {messages:[{id, body_b64 | body, body_kind, annotations, properties}],
//   connection_error, link_error, disconnected}
const { rhea, args, connect_options, jsonable, condition, finisher } = require('./common');

const a = args();
const result = { messages: [], opened: false, link_opened: false,
                 connection_error: null, link_error: null, disconnected: null };
const finish = finisher(result);
const container = rhea.create_container({ id: 'rhea-receive' });
const conn = container.connect(connect_options(a.connection));
const receiver = conn.open_receiver({ source: a.address, autoaccept: false,
                                      credit_window: a.credit || 100 });
let idle_timer = null;
function arm_idle() {
  if (!a.idle_ms) return;
  if (idle_timer) clearTimeout(idle_timer);
  idle_timer = setTimeout(() => conn.close(), a.idle_ms);
}

setTimeout(() => finish({ timeout: true }), a.timeout_ms || 10000);

conn.on('connection_open', () => { result.opened = true; });
receiver.on('receiver_open', () => { result.link_opened = true; arm_idle(); });
receiver.on('message', (ctx) => {
  const m = ctx.message;
  const ann = m.message_annotations || {};
  ctx.delivery.accept();
  if (a.device && ann['x-opt-device-id'] !== a.device) { arm_idle(); return; }
  const out = { id: m.message_id, annotations: jsonable(ann),
                properties: jsonable(m.application_properties || null) };
  const b = m.body;
  if (b && b.typecode === 0x75) { out.body_kind = 'data'; out.body_b64 = Buffer.from(b.content).toString('base64'); }
  else if (Buffer.isBuffer(b)) { out.body_kind = 'binary-value'; out.body_b64 = b.toString('base64'); }
  else { out.body_kind = 'value'; out.body = jsonable(b); }
  result.messages.push(out);
  if (a.count && result.messages.length >= a.count) { conn.close(); return; }
  arm_idle();
});
receiver.on('receiver_error', (ctx) => { result.link_error = condition(ctx.receiver.error); conn.close(); });
conn.on('connection_error', (ctx) => { result.connection_error = condition(ctx.error || ctx.connection.error); });
conn.on('connection_close', () => finish());
conn.on('disconnected', (ctx) => finish({ disconnected: condition(ctx.error) || true }));
conn.on('error', (e) => finish({ error: String(e) }));
