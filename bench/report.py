#!/usr/bin/env python3
"""Summaries, plot and docs/BENCHMARKS.md for bench/compare.sh and bench/connections.sh.

    report.py summarize RUNS.jsonl OUT.json      # compare.sh: warden-bench lines (+ server, round) -> results file
    report.py plot RESULTS.json OUT.png          # throughput and p99 per server (gnuplot)
    report.py table RESULTS.json                 # the comparison table, as text
    report.py doc RESULTS.json OUT.md            # docs/BENCHMARKS.md (with the latest *-connections.json beside)
    report.py connections RUNS.jsonl OUT.json    # connections.sh: its runs -> results file

summarize and connections take run parameters and versions from the environment (see compare.sh)."""

import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

SERVERS = ["warden", "rabbitmq", "proton"]
NAMES = {"warden": "warden", "rabbitmq": "RabbitMQ (AMQP 1.0 plugin)", "proton": "Proton C example broker"}
SHORT = {"warden": "warden", "rabbitmq": "RabbitMQ", "proton": "Proton broker"}
# Issue #6: 2 vCPU, 10 connections x 100 unsettled, 256 B, durable
REFERENCE = {"rabbitmq": {"ingest": 18200, "ingest_p99": 309, "drain": 30600}, "proton": {"ingest": 308000}}


def machine():
    m = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                m["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                m["mem_gib"] = round(int(line.split()[1]) / 1048576, 1)
                break
    except OSError:
        pass
    return m


# summary keys, from the labels compare.sh gives its runs
SCENARIOS = ("ingest", "drain", "e2e", "e2e_paced", "e2e_fast", "rtt", "rest_paced")


def run_key(r):
    label = r.get("label")
    if label:
        return label.replace("-", "_")
    if r["scenario"] == "e2e":  # results written before runs had labels
        return "e2e" if r.get("target_rate") is None else "e2e_paced"
    return r["scenario"]


def env_int(name, default=None):
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs_path, out_path):
    runs = [json.loads(l) for l in open(runs_path) if l.strip()]
    summary = {}
    for s in SERVERS:
        mine = [r for r in runs if r["server"] == s]
        if not mine:
            continue
        out = {}
        for sc in SCENARIOS:
            rs = [r for r in mine if run_key(r) == sc]
            if not rs:
                continue
            rates = [r["rate"] for r in rs if r.get("rate")]
            d = {
                "runs": len(rs),
                "rate": med(rates),
                "rate_min": min(rates) if rates else None,
                "rate_max": max(rates) if rates else None,
                "p50_ms": med([r.get("p50_ms") for r in rs]),
                "p99_ms": med([r.get("p99_ms") for r in rs]),
                "p999_ms": med([r.get("p999_ms") for r in rs]),
                "errors": sum(r.get("errors", 0) for r in rs),
                "timed_out": sum(1 for r in rs if r.get("timed_out")),
                "messages": rs[0]["messages"],
            }
            if sc.startswith("e2e") or sc == "rest_paced":
                d["target_rate"] = rs[0].get("target_rate")
                d["max_send_lag_ms"] = (max((r.get("max_send_lag_ms") or 0) for r in rs)
                                        if d["target_rate"] is not None else None)
                d["max_gap_ms"] = max((r.get("max_gap_ms") or 0) for r in rs)
                d["ingest_rate"] = med([r.get("ingest_rate") for r in rs])
                d["accept_p99_ms"] = med([r.get("accept_p99_ms") for r in rs])
                d["stale"] = sum(r.get("stale", 0) for r in rs)
            out[sc] = d
        cs = [r for r in mine if r["scenario"] == "connections"]
        if cs:
            c = cs[-1]
            out["connections"] = {k: c.get(k) for k in (
                "connections", "connected", "failed", "seconds", "rate", "connect_p50_ms", "connect_p99_ms",
                "server_rss_before_kb", "server_rss_kb", "server_rss_per_connection_kb", "connect_concurrency")}
        summary[s] = out
    doc = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "versions": {
            "warden": os.environ.get("WARDEN_REV"),
            "rabbitmq-server": os.environ.get("RABBITMQ_VERSION"),
            "erlang-base": os.environ.get("ERLANG_VERSION"),
            "libqpid-proton11": os.environ.get("PROTON_VERSION"),
        },
        "params": {
            "rounds": env_int("ROUNDS"), "connections": env_int("CONNS"), "window": env_int("WINDOW"),
            "size": env_int("SIZE"), "drain_window": env_int("DRAIN_WINDOW"),
            "messages": {"warden": env_int("MSGS_WARDEN"), "rabbitmq": env_int("MSGS_RABBITMQ"),
                         "proton": env_int("MSGS_PROTON")},
            "e2e_rate": env_int("E2E_RATE"), "e2e_duration": env_int("E2E_DURATION"),
            "e2e_fast_rate": env_int("E2E_FAST_RATE"), "rtt_messages": env_int("RTT_MSGS"),
            "rest_rate": env_int("REST_RATE"), "rest_duration": env_int("REST_DURATION"),
            "idle_connections": env_int("CONN_N"), "connect_concurrency": env_int("CONNECT_CONCURRENCY"),
            "proton_broker_patched_pop": os.environ.get("PROTON_PATCHED") == "true",
        },
        "summary": summary,
        "runs": runs,
    }
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def fmt(v, spec=",.0f"):
    return "–" if v is None else format(v, spec)


def ratio(a, b):
    if not a or not b:
        return "–"
    q = a / b
    return ("%.2f×" % q) if q >= 0.1 else ("%.2g×" % q)


def g(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def table_md(res):
    sm = res["summary"]
    p = res["params"]
    rows = ["| server | ingest msg/s | ingest settle p99 ms | drain msg/s | e2e msg/s | e2e p50 / p99 ms "
            "| e2e at %s msg/s: p50 / p99 / p99.9 ms | e2e at %s msg/s: p50 / p99 ms | round trip, 1 in flight: "
            "p50 / p99 ms | idle connection RSS kB |" % (fmt(p.get("e2e_rate")), fmt(p.get("e2e_fast_rate"))),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in SERVERS:
        if s not in sm:
            continue
        x = sm[s]
        rows.append("| %s | %s | %s | %s | %s | %s / %s | %s / %s / %s | %s | %s / %s | %s |" % (
            NAMES[s], fmt(g(x, "ingest", "rate")), fmt(g(x, "ingest", "p99_ms"), ".1f"), fmt(g(x, "drain", "rate")),
            fmt(g(x, "e2e", "rate")), fmt(g(x, "e2e", "p50_ms"), ".1f"), fmt(g(x, "e2e", "p99_ms"), ".1f"),
            fmt(g(x, "e2e_paced", "p50_ms"), ".2f"), fmt(g(x, "e2e_paced", "p99_ms"), ".2f"),
            fmt(g(x, "e2e_paced", "p999_ms"), ".2f"),
            "–" if "e2e_fast" not in x else "%s / %s (%s msg/s)" % (
                fmt(g(x, "e2e_fast", "p50_ms"), ".2f"), fmt(g(x, "e2e_fast", "p99_ms"), ".2f"),
                fmt(g(x, "e2e_fast", "rate"))),
            fmt(g(x, "rtt", "p50_ms"), ".2f"), fmt(g(x, "rtt", "p99_ms"), ".2f"),
            fmt(g(x, "connections", "server_rss_per_connection_kb"), ".1f")))
    return "\n".join(rows)


def targets_md(res, cres):
    """Issue #6's targets against this run (and the connections run beside it)."""
    sm = res["summary"]
    w = sm.get("warden")
    if not w:
        return ""
    p = res["params"]
    rows = ["| target (issue #6) | measured | met |", "| --- | --- | :---: |"]

    def row(name, measured, ok):
        rows.append("| %s | %s | %s |" % (name, measured, "–" if ok is None else ("yes" if ok else "**no**")))

    def at_least(v, limit):
        return None if v is None else v >= limit

    def below(v, limit):
        return None if v is None else v < limit

    ing, ing99 = g(w, "ingest", "rate"), g(w, "ingest", "p99_ms")
    row("durable ingest ≥ 150 000 msg/s, settle p99 < 5 ms", "%s msg/s, p99 %s ms" % (fmt(ing), fmt(ing99, ".1f")),
        None if ing is None or ing99 is None else ing >= 150000 and ing99 < 5)
    for s, k in (("rabbitmq", 8), ("proton", 0.5)):
        o = g(sm, s, "ingest", "rate")
        if o:
            row("ingest ≥ %g× %s" % (k, SHORT[s]), ratio(ing, o), at_least(ing / o if ing else None, k))
    dr = g(w, "drain", "rate")
    row("drain ≥ 150 000 msg/s", "%s msg/s" % fmt(dr), at_least(dr, 150000))
    fr, f99 = g(w, "e2e_fast", "rate"), g(w, "e2e_fast", "p99_ms")
    target_rate = p.get("e2e_fast_rate") or 100000
    row("e2e ≥ 100 000 msg/s with end-to-end p99 < 10 ms",
        "paced at %s: %s msg/s, p99 %s ms (unpaced, 10 × %s in flight: %s msg/s, p99 %s ms)" % (
            fmt(target_rate), fmt(fr), fmt(f99, ".2f"), p.get("window"), fmt(g(w, "e2e", "rate")),
            fmt(g(w, "e2e", "p99_ms"), ".1f")),
        None if fr is None or f99 is None else fr >= 0.99 * 100000 and f99 < 10)
    rtt = g(w, "rtt", "p50_ms")
    row("unloaded durable round trip p50 ≤ 0.3 ms", "p50 %s ms, p99 %s ms" % (fmt(rtt, ".2f"),
                                                                             fmt(g(w, "rtt", "p99_ms"), ".2f")),
        None if rtt is None else rtt <= 0.3)
    r99 = g(w, "rest_paced", "p99_ms")
    row("REST command → device p99 < 5 ms at 1 000/s", "p50 %s ms, p99 %s ms, p99.9 %s ms at %s/s" % (
        fmt(g(w, "rest_paced", "p50_ms"), ".2f"), fmt(r99, ".2f"), fmt(g(w, "rest_paced", "p999_ms"), ".2f"),
        fmt(g(w, "rest_paced", "rate"))), below(r99, 5))
    if cres:
        runs = cres.get("runs", [])
        most = max((r.get("connected") or 0 for r in runs), default=0)
        row("100 000 concurrent idle device connections", "%s (the most run here; see Connections)" % fmt(most),
            most >= 100000)
        for tls, external, limit, what in ((False, False, 16, "plain TCP"), (True, False, 48, "TLS"),
                                           (True, True, 48, "TLS with client certificates (SASL EXTERNAL)")):
            per = [r["server_rss_per_connection_kb"] for r in runs
                   if bool(r.get("tls")) == tls and bool(r.get("external")) == external
                   and r.get("server_rss_per_connection_kb") is not None]
            if per:
                worst = max(per)
                row("≤ %d KiB of gateway RSS per idle connection, %s" % (limit, what),
                    "%s KiB (worst row)" % fmt(worst, ".1f"), worst <= limit)
    return "\n".join(rows)


def ratios_md(res):
    sm = res["summary"]
    w = sm.get("warden")
    if not w:
        return ""
    rows = ["| warden ÷ … | ingest msg/s | drain msg/s | e2e msg/s | ingest settle p99 | e2e p99 at %s msg/s "
            "| idle connection RSS |" % fmt(res["params"].get("e2e_rate")),
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in ("rabbitmq", "proton"):
        if s not in sm:
            continue
        o = sm[s]
        rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            NAMES[s], ratio(g(w, "ingest", "rate"), g(o, "ingest", "rate")),
            ratio(g(w, "drain", "rate"), g(o, "drain", "rate")), ratio(g(w, "e2e", "rate"), g(o, "e2e", "rate")),
            ratio(g(w, "ingest", "p99_ms"), g(o, "ingest", "p99_ms")),
            ratio(g(w, "e2e_paced", "p99_ms"), g(o, "e2e_paced", "p99_ms")),
            ratio(g(w, "connections", "server_rss_per_connection_kb"),
                  g(o, "connections", "server_rss_per_connection_kb"))))
    return "\n".join(rows)


def table_text(res):
    sm = res["summary"]
    print("%-14s %10s %10s %10s %10s %9s %9s %9s %9s %8s %7s" % (
        "server", "ingest/s", "settle p99", "drain/s", "e2e/s", "e2e p50", "e2e p99", "paced p50", "paced p99",
        "kB/conn", "errors"))
    for s in SERVERS:
        if s not in sm:
            continue
        x = sm[s]
        errs = sum(g(x, sc, "errors") or 0 for sc in ("ingest", "drain", "e2e", "e2e_paced"))
        print("%-14s %10s %10s %10s %10s %9s %9s %9s %9s %8s %7d" % (
            SHORT[s], fmt(g(x, "ingest", "rate")), fmt(g(x, "ingest", "p99_ms"), ".1f"), fmt(g(x, "drain", "rate")),
            fmt(g(x, "e2e", "rate")), fmt(g(x, "e2e", "p50_ms"), ".1f"), fmt(g(x, "e2e", "p99_ms"), ".1f"),
            fmt(g(x, "e2e_paced", "p50_ms"), ".2f"), fmt(g(x, "e2e_paced", "p99_ms"), ".2f"),
            fmt(g(x, "connections", "server_rss_per_connection_kb"), ".1f"), errs))


def plot(res_path, png_path):
    res = json.load(open(res_path))
    sm = res["summary"]
    servers = [s for s in SERVERS if s in sm]
    with tempfile.TemporaryDirectory() as d:
        thr = os.path.join(d, "thr.dat")
        lat = os.path.join(d, "lat.dat")
        with open(thr, "w") as f:
            for sc in ("ingest", "drain", "e2e"):
                f.write('"%s" %s\n' % (sc, " ".join(str(g(sm[s], sc, "rate") or 0) for s in servers)))
        with open(lat, "w") as f:
            f.write('"ingest settle p99" %s\n' % " ".join(str(g(sm[s], "ingest", "p99_ms") or 0) for s in servers))
            f.write('"e2e p99" %s\n' % " ".join(str(g(sm[s], "e2e", "p99_ms") or 0) for s in servers))
            f.write('"e2e p99 at %s/s" %s\n' % (res["params"].get("e2e_rate"),
                    " ".join(str(g(sm[s], "e2e_paced", "p99_ms") or 0) for s in servers)))
        p = res["params"]
        title = "%d conn x %d unsettled, %d B, median of %d rounds, %s vCPU (%s)" % (
            p["connections"], p["window"], p["size"], p["rounds"], res["machine"].get("nproc"), res["date"][:10])
        cols = " , ".join('"%s" using %d:xtic(1) title "%s"' % ("{f}", i + 2, SHORT[s]) for i, s in enumerate(servers))
        script = """
set terminal pngcairo size 1280,520 font "sans,10"
set output "{png}"
set multiplot layout 1,2 title "{title}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set format y "%.0s%c"
set grid ytics
set key top right
set title "throughput (msg/s, log scale)"
set ylabel "msg/s"
plot {thr_cols}
set title "p99 latency (ms, log scale)"
set ylabel "ms"
set format y "%g"
plot {lat_cols}
unset multiplot
""".format(png=png_path, title=title, thr_cols=cols.replace("{f}", thr), lat_cols=cols.replace("{f}", lat))
        sp = os.path.join(d, "plot.gp")
        open(sp, "w").write(script)
        subprocess.run(["gnuplot", sp], check=True)


def latest_connections(res_dir):
    files = sorted(glob.glob(os.path.join(res_dir, "*-connections.json")), key=os.path.getmtime)
    return files[-1] if files else None


def conn_mode(r):
    return (("TLS, client certificate" if r.get("external") else "TLS") if r["tls"] else "plain") + (
        ", session id each" if r.get("resume") else "")


def connections_md(cres):
    rows = ["| connections | transport | connect all: time | connects/s | connect p50 / p99 ms | server RSS per "
            "connection | server CPU per connect | reconnect one by one: p50 / p99 ms | server CPU per close + "
            "reconnect | TLS sessions resumed | closing took | server RSS once all closed |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in cres["runs"]:
        closed = r.get("server_rss_after_close_kb")
        before = r.get("server_rss_before_kb")
        took = r.get("server_close_seconds")
        rows.append("| %s | %s | %s s | %s | %s / %s | %s kB | %s µs | %s / %s | %s µs | %s | %s | %s |" % (
            fmt(r["connections"]), conn_mode(r), fmt(r["seconds"], ".2f"), fmt(r["rate"]),
            fmt(r["connect_p50_ms"], ".1f"), fmt(r["connect_p99_ms"], ".1f"),
            fmt(r["server_rss_per_connection_kb"], ".1f"), fmt(r.get("server_cpu_us_per_connection")),
            fmt(r.get("reconnect_connect_p50_ms"), ".2f"), fmt(r.get("reconnect_connect_p99_ms"), ".2f"),
            fmt(r.get("reconnect_server_cpu_us_per_connection")),
            "–" if not r["tls"] else fmt(r.get("reconnect_resumed")),
            "%s s" % fmt(took, ".1f") if took is not None else "–",
            "+%s MB" % fmt((closed - before) / 1024.0, ".1f") if closed is not None and before is not None else "–"))
    return "\n".join(rows)


def connections_table(cres):
    print("%7s %-24s %8s %8s %8s %8s %9s %9s %9s %9s %9s %8s" % (
        "conns", "mode", "seconds", "conn/s", "p50 ms", "p99 ms", "srv kB/c", "srv us/c", "re p50", "re p99",
        "re us/c", "resumed"))
    for r in cres["runs"]:
        print("%7d %-24s %8s %8s %8s %8s %9s %9s %9s %9s %9s %8s" % (
            r["connections"], conn_mode(r), fmt(r["seconds"], ".2f"), fmt(r["rate"], ".0f"),
            fmt(r["connect_p50_ms"], ".1f"), fmt(r["connect_p99_ms"], ".1f"),
            fmt(r["server_rss_per_connection_kb"], ".1f"), fmt(r.get("server_cpu_us_per_connection"), ".0f"),
            fmt(r.get("reconnect_connect_p50_ms"), ".2f"), fmt(r.get("reconnect_connect_p99_ms"), ".2f"),
            fmt(r.get("reconnect_server_cpu_us_per_connection"), ".0f"), fmt(r.get("reconnect_resumed"), "d")))


def doc(res_path, md_path):
    res = json.load(open(res_path))
    res_dir = os.path.dirname(os.path.abspath(res_path))
    rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(md_path)))
    p, m, v = res["params"], res["machine"], res["versions"]
    png = os.path.splitext(res_path)[0] + ".png"
    cfile = latest_connections(res_dir)
    out = []
    out.append("# Benchmarks\n")
    out.append("warden against two other AMQP 1.0 servers on the same machine, with the same client "
               "(`warden-bench`, [bench/README.md](%s)) and the same load. Written by `bench/compare.sh` "
               "(and `bench/connections.sh` for the connection table) from [%s](%s); do not edit by hand.\n"
               % (rel(os.path.join(res_dir, "..", "README.md")), os.path.basename(res_path), rel(res_path)))
    out.append("- **warden** %s, release build, `device_rate = 0`, LMDB store on ext4 (group commit, and an "
               "`O_DIRECT` append journal for batches of up to 16 messages: a message is settled `accepted` once it "
               "is on disk);" % (v.get("warden") or "?"))
    out.append("- **RabbitMQ** %s (Erlang %s) with `rabbitmq_amqp1_0`, one durable classic queue "
               "(`/queue/warden-compare`, terminus durability `configuration`), durable messages: settled after the "
               "publisher confirm;" % (v.get("rabbitmq-server") or "?", v.get("erlang-base") or "?"))
    out.append("- **Proton C example broker** (`broker.c` from `libqpid-proton11-dev-examples` %s, built with "
               "`gcc -O2`): in memory, accepts on receipt, sends pre-settled — the upper bound for the AMQP "
               "machinery alone%s." % (v.get("libqpid-proton11") or "?",
                                       "; its queue pop is patched from O(n) to O(1), see below"
                                       if p.get("proton_broker_patched_pop") else ""))
    out.append("")
    out.append("Machine: %s vCPU (%s), %s GiB, Linux %s; client and server share it. Run %s. Load: %d connections × %d "
               "unsettled, %d-byte durable messages; drain with a credit window of %d; e2e runs ingest and drain at "
               "once. Messages per run: warden %s, RabbitMQ %s, Proton broker %s. Each figure is the median of %d "
               "rounds; the servers alternate between rounds.\n" % (
                   m.get("nproc"), m.get("cpu", "?"), m.get("mem_gib", "?"), m.get("kernel", "?"), res["date"],
                   p["connections"], p["window"], p["size"], p["drain_window"], fmt(p["messages"].get("warden")),
                   fmt(p["messages"].get("rabbitmq")), fmt(p["messages"].get("proton")), p["rounds"]))
    out.append("## Results\n")
    out.append(table_md(res))
    out.append("")
    out.append("- **ingest**: messages settled `accepted` per second, first send to last settlement; **settle p99**: "
               "send → `accepted` (with %d in flight per connection this is mostly queueing: latency ≈ connections × "
               "window / rate);" % p["window"])
    out.append("- **drain**: one receiver reading what ingest left, messages per second;")
    out.append("- **e2e**: ingest and drain at once, unpaced: messages received per second, and receipt time − send "
               "time (stamped in the payload by the same process). Where the one receiver is slower than the ten "
               "senders (RabbitMQ, the Proton broker) a backlog builds up during the run and these latencies "
               "measure it;")
    out.append("- **e2e at %s msg/s**: the same, paced at a rate every server sustains, for %s s: the servers' own "
               "end-to-end latency;" % (fmt(p.get("e2e_rate")), p.get("e2e_duration")))
    out.append("- **e2e at %s msg/s**: the same, paced at issue #6's e2e rate, for the servers that sustain it;"
               % fmt(p.get("e2e_fast_rate")))
    out.append("- **round trip, 1 in flight**: ingest with one connection and one unsettled message (%s messages): "
               "send → `accepted`, durable;" % fmt(p.get("rtt_messages")))
    out.append("- **idle connection RSS**: the server's VmRSS growth per idle connection (SASL, open, one session, "
               "no link), %s connections opened %s at a time, read 2 s after the last one opened. It is "
               "measured after the throughput scenarios, so a server whose heap still holds the pages those "
               "freed places new connections in memory already resident and shows less than it allocates: the "
               "Proton broker, started fresh, grows 47.2 kB per connection (83 KiB allocated), not 10.9. "
               "Connections below measures warden fresh.\n"
               % (fmt(p.get("idle_connections")), p.get("connect_concurrency")))
    per_round = []
    for s in SERVERS:
        rs = sorted((r for r in res.get("runs", []) if r["server"] == s and run_key(r) == "e2e_paced"),
                    key=lambda r: r["round"])
        if rs:
            per_round.append("%s %s ms (longest pause %s ms)" % (
                SHORT[s], " / ".join(fmt(r.get("p99_ms"), ".1f") for r in rs),
                " / ".join(fmt(r.get("max_gap_ms"), ".0f") for r in rs)))
    if per_round:
        out.append("Paced e2e p99 by round: %s. A pause of tens to hundreds of ms in one round moves its p99; "
                   "`max_gap_ms` and `max_send_lag_ms` in the JSON show whether the client stalled too.\n"
                   % "; ".join(per_round))
    tg = targets_md(res, json.load(open(cfile)) if cfile else None)
    if tg:
        out.append("### Targets\n")
        out.append(tg)
        out.append("")
        out.append("What each optimisation bought, where the time and memory go, and why the targets marked "
                   "**no** are out of reach as things stand: [PERFORMANCE.md](PERFORMANCE.md).\n")
    rt = ratios_md(res)
    if rt:
        out.append("Ratios (warden's figure divided by the other's; above 1 is better for rates, below 1 is better "
                   "for latency and memory):\n")
        out.append(rt)
        out.append("")
    out.append("Reference figures from issue #6 (2 vCPU, 10 × 100, 256 B, durable): RabbitMQ 3.10 AMQP 1.0 "
               "18 200 msg/s ingest (settle p99 309 ms), 30 600 msg/s drain; Proton C example broker 308 000 msg/s.\n")
    if os.path.exists(png):
        out.append("![throughput and p99 per server](%s)\n" % rel(png))
    if cfile:
        cres = json.load(open(cfile))
        out.append("## Connections (warden)\n")
        cp = cres.get("params", {})
        out.append("`bench/connections.sh` (%s, [%s](%s)): a fresh warden for each row; N idle device connections "
                   "(SASL PLAIN with a SAS token, AMQP open, a session and a receiver on `commands`), %s connecting "
                   "at once; TLS 1.3 against warden's development certificate (EC P-256), verified with `--ca`. RSS: "
                   "warden's VmRSS growth per connection 2 s after the last one connected. CPU: warden's user + "
                   "system time from the first connect to the last one ready, per connection. Then every "
                   "connection is closed and reconnected, 3 at a time (so latencies there are without queueing, "
                   "unlike the first pass where %s handshakes compete for the server); with a session id each, "
                   "the reconnect offers the TLS session its connection had.%s\n" % (
                       cres.get("date", "?"), os.path.basename(cfile), rel(cfile), cp.get("connect_concurrency", "?"),
                       cp.get("connect_concurrency", "?"),
                       " With a client certificate, every device presents its own (EC P-256, from a CA warden has as "
                       "`tls_ca`) and logs in with SASL EXTERNAL; those rows stop at 10 000, because `warden-bench` "
                       "gives every certificate an OpenSSL context of its own and at 19 000 the client had grown to "
                       "13.6 GB before it connected." if any(r.get("external") for r in cres.get("runs", [])) else ""))
        out.append("The largest N is the most this machine allows: its hard `RLIMIT_NOFILE` is 20 000 per "
                   "process and raising it needs `CAP_SYS_RESOURCE`, which the sandbox withholds; 100 000 "
                   "connections could not be tried here. **server RSS once all closed** is warden's VmRSS 2 s "
                   "after it finished closing every connection (the first second after the last close in which it "
                   "used under 20 ms of CPU; **closing took** is how long after the last close that came), against "
                   "before the first one opened. Little is left: every connection is a raw connection whose "
                   "bytes warden moves itself (decision 8). Until session 8 plain connections were Proton's "
                   "own, and its proactor kept each closed one's timer entry, and so its heap page, until "
                   "`idle_timeout` had passed (19 000 closed: +130.8 MB then, +4.7 MB now).\n")
        out.append(connections_md(cres))
        out.append("")
        out.append("Resumption with Proton 0.37 as the client: Proton saves a connection's TLS session when it shuts "
                   "down, under the session id given to `pn_ssl_init`, in a process-wide cache of only **4** "
                   "sessions (`SSL_CACHE_SIZE` in `ssl/openssl.c`), and offers it to the next transport initialised "
                   "with that id. So a Proton client process resumes only its last 4 sessions: closing N connections "
                   "and then reconnecting them resumes 4 (measured). `warden-bench` therefore reconnects each "
                   "connection right after closing it. Sharing one session id among many connections does not help "
                   "either: OpenSSL's client marks a TLS 1.3 session non-resumable once a connection that resumed "
                   "it receives a new ticket, so only the connections already started by then resume (measured: "
                   "100 of 1 000, the connect concurrency). A device holding its own session (one connection per "
                   "process) resumes every time; warden issues one ticket per connection (`SSL_CTX_set_num_tickets(1)`).\n")
    out.append("## How to reproduce\n")
    out.append("```sh\ncmake --preset release && cmake --build build/release -j2\n"
               "bench/compare.sh            # ~10 min; apt-get installs rabbitmq-server, "
               "libqpid-proton11-dev-examples, gnuplot-nox if missing\nbench/connections.sh        "
               "# warden only: plain, TLS, TLS with resumption\n```\n")
    out.append("`compare.sh` starts each server on 127.0.0.1 only, on ports the OS picks: warden with a config like "
               "`bench/run.sh`'s; RabbitMQ from `/usr/lib/rabbitmq/bin/rabbitmq-server` as a private node (unique "
               "node name, `RABBITMQ_NODE_IP_ADDRESS=127.0.0.1`, its own `RABBITMQ_MNESIA_BASE`/`LOG_BASE`, cookie, "
               "`epmd -address 127.0.0.1` and Erlang distribution bound to loopback) with only `rabbitmq_amqp1_0` "
               "enabled; the Proton broker compiled from `dpkg -L libqpid-proton11-dev-examples`'s `broker.c`. It "
               "stops all of them by pid on exit and writes `bench/results/<date>.json` (every run, plus medians), "
               "`<date>.png` and this file. Knobs (environment): `SERVERS`, `ROUNDS`, `CONNS`, `WINDOW`, `SIZE`, "
               "`MSGS_WARDEN`, `MSGS_RABBITMQ`, `MSGS_PROTON`, `CONN_N`, `CONNECT_CONCURRENCY`, `TIMEOUT`, "
               "`PROTON_BROKER_PATCH=0` (build the broker as shipped), `DOC=` (do not write this file); see the "
               "script's header. `warden-bench` alone works against any AMQP 1.0 server: "
               "`--user/--password` or `--sasl-anonymous`, `--address QUEUE`.\n")
    out.append("## Caveats\n")
    out.append("- Client and server share 2 vCPUs: each figure is for the pair, and whatever else runs shows up in "
               "it. Expect ±30 % between runs; the table gives medians, the JSON every run.")
    out.append("- warden keeps at most 96 messages outstanding per device link (`WD_CREDIT_WINDOW`: credit plus "
               "commits pending, topped up once under half), so its ingest runs with up to 96, not %d, unsettled "
               "per connection; a larger window only lengthened the queue in front of the store (see "
               "PERFORMANCE.md)." % p["window"])
    out.append("- The Proton example broker grants each sender a credit of only 5 (`WINDOW` in `broker.c`), so its "
               "ingest runs with 5, not %d, unsettled per connection; it settles on receipt and keeps nothing on "
               "disk." % p["window"])
    if p.get("proton_broker_patched_pop"):
        out.append("- The example broker pops its queues with `memmove` of the whole queue (O(n) per message, O(n²) to "
                   "drain: unpatched, 100 000 queued messages drained at ~47 000 msg/s on the development VM, and "
                   "the time grows with the square of the count, so a million would take minutes); `compare.sh` "
                   "replaces that with a head index (six substitutions, in the script). Ingest is unaffected.")
    out.append("- RabbitMQ runs as root from the package's scripts with default settings (classic queue v1, "
               "`queue_index_embed_msgs_below` 4096, so 256-byte messages live in the queue index).")
    out.append("- warden's drain and e2e receivers are a service reading consumer group `compare`; each round's "
               "drain reads exactly what that round's ingest wrote.")
    out.append("")
    with open(md_path, "w") as f:
        f.write("\n".join(out))


def connections(runs_path, out_path):
    runs = [json.loads(l) for l in open(runs_path) if l.strip()]
    d = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "versions": {"warden": os.environ.get("WARDEN_REV"), "libqpid-proton11": os.environ.get("PROTON_VERSION")},
        "params": {"connect_concurrency": env_int("CONNECT_CONCURRENCY"), "settle_ms": env_int("SETTLE_MS")},
        "runs": runs,
    }
    with open(out_path, "w") as f:
        json.dump(d, f, indent=1)
        f.write("\n")


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "summarize" and len(argv) == 4:
        summarize(argv[2], argv[3])
    elif cmd == "plot" and len(argv) == 4:
        plot(argv[2], argv[3])
    elif cmd == "table" and len(argv) == 3:
        table_text(json.load(open(argv[2])))
    elif cmd == "doc" and len(argv) == 4:
        doc(argv[2], argv[3])
    elif cmd == "connections" and len(argv) == 4:
        connections(argv[2], argv[3])
    elif cmd == "connections-table" and len(argv) == 3:
        connections_table(json.load(open(argv[2])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
