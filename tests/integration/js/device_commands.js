'use strict';
// A device receiving its commands with rhea and settling each delivery as a plan says.
// argv[2] JSON: {connection, address (default "commands"), credit, count, idle_ms, timeout_ms,
//   plan: {message_id: [outcome for the 1st delivery, for the 2nd, ...]}, default_outcome}
// outcome: accept | reject | release | modified_failed | undeliverable | hold (leave unsettled)
// Stops after `count` deliveries, or `idle_ms` without one, or timeout.
// prints {received:[{id, delivery_count, body_b64, correlation_id, annotations, outcome}],
//   link_opened, connection_error, link_error, disconnected}
const { rhea, args, connect_options, jsonable, condition, finisher } = require('./common');

const a = args();
const plan = a.plan || {};
const seen = {};
const result = { received: [], opened: false, link_opened: false,
                 connection_error: null, link_error: null, disconnected: null };
const finish = finisher(result);
const container = rhea.create_container({ id: 'rhea-device' });
const conn = container.connect(connect_options(a.connection));
const receiver = conn.open_receiver({ source: a.address || 'commands', autoaccept: false,
                                      credit_window: a.credit || 10 });
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
  const key = String(m.message_id);
  const n = seen[key] = (seen[key] || 0) + 1;
  const outcomes = plan[key] || [];
  const outcome = outcomes[n - 1] || a.default_outcome || 'accept';
  const b = m.body;
  const out = { id: jsonable(m.message_id), delivery_count: m.delivery_count === undefined ? 0 : m.delivery_count,
                correlation_id: jsonable(m.correlation_id === undefined ? null : m.correlation_id),
                annotations: jsonable(m.message_annotations || {}), outcome: outcome };
  if (b && b.typecode === 0x75) out.body_b64 = Buffer.from(b.content).toString('base64');
  else out.body = jsonable(b);
  result.received.push(out);
  settle_later(ctx.delivery, outcome);
  if (a.count && result.received.length >= a.count) {
    // let the dispositions go out before closing
    setTimeout(() => conn.close(), 200 + 20 * pending.length);
    return;
  }
  arm_idle();
});

// One disposition per tick: rhea 3.0.5 merges dispositions written in one tick into a range
// carrying the first one's outcome when that range has a single delivery so far
// (session.js write_dispositions), so an `accept` followed by a `reject` would reach the peer as
// two accepts.
const pending = [];
let settling = false;
function settle_later(d, outcome) {
  pending.push([d, outcome]);
  if (!settling) { settling = true; setTimeout(settle_next, 0); }
}
function settle_next() {
  const next = pending.shift();
  if (!next) { settling = false; return; }
  const [d, outcome] = next;
  if (outcome === 'accept') d.accept();
  else if (outcome === 'reject') d.reject({ condition: 'amqp:internal-error', description: 'device says no' });
  else if (outcome === 'release') d.release();
  else if (outcome === 'modified_failed') d.modified({ delivery_failed: true });
  else if (outcome === 'undeliverable') d.modified({ undeliverable_here: true });
  // 'hold': left unsettled
  setTimeout(settle_next, 10);
}
receiver.on('receiver_error', (ctx) => { result.link_error = condition(ctx.receiver.error); conn.close(); });
conn.on('connection_error', (ctx) => { result.connection_error = condition(ctx.error || ctx.connection.error); });
conn.on('connection_close', () => finish());
conn.on('disconnected', (ctx) => finish({ disconnected: condition(ctx.error) || true }));
conn.on('error', (e) => finish({ error: String(e) }));
