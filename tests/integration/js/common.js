'use strict';
// Shared bits of the rhea scripts: connection options from the JSON argument,
// a one-shot result printer and JSON-safe conversion of AMQP values.
const fs = require('fs');
const rhea = require('rhea');

function args() {
  return JSON.parse(process.argv[2] || '{}');
}

function connect_options(c) {
  const o = { host: c.host, port: c.port, reconnect: false, idle_time_out: 0 };
  if (c.tls) {
    o.transport = 'tls';
    o.servername = c.host;
    o.ca = [fs.readFileSync(c.ca)];
    o.rejectUnauthorized = true;
  }
  if (c.username !== undefined) {
    o.username = c.username;
    o.password = c.password;
  }
  return o;
}

// Converts AMQP values as rhea decodes them into JSON: a timestamp (Date) becomes
// {"$timestamp": ms}, a binary (Buffer) {"$binary": base64}.
function jsonable(v) {
  if (v instanceof Date) return { $timestamp: v.getTime() };
  if (Buffer.isBuffer(v)) return { $binary: v.toString('base64') };
  if (Array.isArray(v)) return v.map(jsonable);
  if (v && typeof v === 'object') {
    const o = {};
    for (const k of Object.keys(v)) o[k] = jsonable(v[k]);
    return o;
  }
  if (typeof v === 'bigint') return v.toString();
  return v;
}

function condition(e) {
  if (!e) return null;
  return { condition: e.condition || (e.value && e.value.condition) || null,
           description: e.description || e.message || String(e) };
}

function finisher(result) {
  let done = false;
  return function finish(extra) {
    if (done) return;
    done = true;
    Object.assign(result, extra || {});
    process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
  };
}

module.exports = { rhea, args, connect_options, jsonable, condition, finisher };
