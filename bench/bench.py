#!/usr/bin/env python3
"""bemi's benchmark suite. Run it through bench/run, which installs what it needs first.

Sections (bench/README.md says what exactly each one times):
  1. write path: pgbench tpcb-like under (a) nothing capturing, (b) bemi, (c) an audit trigger,
     (d) wal2json + pg_recvlogical, interleaved; plus a one-client decomposition of bemi's cost
  2. ingest: a backlog built while the worker is held, then drained; test_decoding on the same WAL
  3. lag: commit -> visible in bemi.changes under pgbench --rate at 80% of bemi's maximum TPS
  4. memory: the worker's peak RSS while it drains one huge transaction
  5. reads: runs bench/reads* when present
  6. rules: ingest under no rules, 100 rules, a mask, an ignored table (skipped changes)
  7. verify: bemi_verify() over the ingest backlog's trail (changes checked per second)
Standard library only.
"""
import argparse
import datetime
import glob
import os
import platform
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PG_CONFIG = os.environ.get("PG_CONFIG", "pg_config")
BINDIR = subprocess.run([PG_CONFIG, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
DB = "bench"

MODES = {
    # scale, clients, threads, write-path seconds and rounds, decomposition seconds and rounds,
    # backlog changes, lag seconds, huge-transaction changes
    "quick": dict(scale=10, clients=8, threads=2, write_secs=10, write_rounds=2, solo_secs=4, solo_rounds=2,
                  backlog=400_000, lag_secs=10, huge=1_000_000, rules_backlog=200_000, rules_rounds=2),
    "smoke": dict(scale=1, clients=4, threads=2, write_secs=3, write_rounds=1, solo_secs=2, solo_rounds=1,
                  backlog=20_000, lag_secs=4, huge=50_000, rules_backlog=20_000, rules_rounds=1),
    "full": dict(scale=10, clients=8, threads=2, write_secs=30, write_rounds=5, solo_secs=10, solo_rounds=3,
                 backlog=2_000_000, lag_secs=60, huge=5_000_000, rules_backlog=500_000, rules_rounds=3),
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The throwaway server
# ---------------------------------------------------------------------------------------------
class Server:
    """A PostgreSQL instance in a temporary directory, run as an unprivileged user."""

    def __init__(self, workdir, port, user):
        self.dir = workdir
        self.data = os.path.join(workdir, "data")
        self.sock = workdir
        self.port = port
        self.user = user
        self.logfile = os.path.join(workdir, "server.log")
        self.running = False

    def as_user(self, args, **kw):
        if self.user and os.geteuid() == 0:
            args = ["runuser", "-u", self.user, "--"] + args
        return subprocess.run(args, check=True, capture_output=True, text=True, **kw)

    def conf_path(self):
        return os.path.join(self.data, "postgresql.conf")

    def init(self, settings):
        self.as_user([f"{BINDIR}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                      "--locale=C"])
        with open(self.conf_path(), "a") as f:
            f.write("\n# bemi bench\n")
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.sock}'\n")
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")

    def set(self, key, value):
        """Appends a setting; takes effect at the next (re)start."""
        with open(self.conf_path(), "a") as f:
            f.write(f"{key} = {value}\n")

    def start(self):
        self.as_user([f"{BINDIR}/pg_ctl", "-D", self.data, "-l", self.logfile, "-w", "-t", "120", "start"])
        self.running = True

    def stop(self):
        if self.running:
            self.as_user([f"{BINDIR}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "300", "stop"])
            self.running = False

    def restart(self):
        self.stop()
        self.start()

    def conninfo(self, db=DB):
        return ["-h", self.sock, "-p", str(self.port), "-U", "postgres", "-d", db]

    def env(self, db=DB):
        env = dict(os.environ, PGHOST=self.sock, PGPORT=str(self.port), PGUSER="postgres", PGDATABASE=db)
        env.pop("PGOPTIONS", None)
        return env

    def psql(self, sql, db=DB, timeout=None):
        """Runs SQL (several statements allowed); returns unaligned, tuples-only output."""
        r = subprocess.run([f"{BINDIR}/psql", *self.conninfo(db), "-XAtq", "-v", "ON_ERROR_STOP=1", "-F", "|"],
                           input=sql, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed ({r.returncode}): {r.stderr.strip()}\n--- SQL ---\n{sql[:2000]}")
        return r.stdout.strip()

    def one(self, sql, db=DB):
        out = self.psql(sql, db)
        return out.splitlines()[-1] if out else ""

    def session(self, db=DB):
        return Session(self, db)


class Session:
    """A long-lived psql session (to hold a lock across other work)."""

    def __init__(self, server, db):
        self.p = subprocess.Popen([f"{BINDIR}/psql", *server.conninfo(db), "-XAtq", "-v", "ON_ERROR_STOP=1"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1)
        self.n = 0

    def run(self, sql):
        """Sends SQL and waits until psql has executed it."""
        self.n += 1
        mark = f"__done_{self.n}__"
        self.p.stdin.write(sql.rstrip() + "\n\\echo " + mark + "\n")
        self.p.stdin.flush()
        out = []
        for line in self.p.stdout:
            if line.strip() == mark:
                return "".join(out)
            out.append(line)
        raise RuntimeError("psql session ended: " + "".join(out))

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except Exception:
            self.p.kill()


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(sorted_xs, q):
    if not sorted_xs:
        return None
    i = min(len(sorted_xs) - 1, max(0, int(round(q * (len(sorted_xs) - 1)))))
    return sorted_xs[i]


def proc_cpu_seconds(pid):
    """utime + stime of a process, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kb(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if v.strip().endswith("kB"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def fmt(x, digits=0, unit=""):
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}{unit}"
    return f"{x:,.{digits}f}{unit}"


def ratio(x, base):
    return None if x is None or not base else x / base


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def goal(met, text):
    return f"**{'met' if met else 'MISSED'}** — {text}"


# ---------------------------------------------------------------------------------------------
# pgbench scripts and configurations
# ---------------------------------------------------------------------------------------------
TPCB_HEAD = r"""\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
BEGIN;
"""
TPCB_BODY = r"""UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
"""
# The same application context in every capturing configuration, passed the way each one takes it.
CONTEXT = "jsonb_build_object('user_id', CAST(:aid AS bigint), 'endpoint', '/pgbench/tpcb', 'method', 'POST')"
SCRIPTS = {
    "plain": TPCB_HEAD + TPCB_BODY,
    "bemi": TPCB_HEAD + f"SELECT bemi_set_context({CONTEXT});\n" + TPCB_BODY,
    "trigger": TPCB_HEAD + f"SELECT set_config('bench.context', ({CONTEXT})::text, true);\n" + TPCB_BODY,
    "wal2json": TPCB_HEAD + f"SELECT pg_logical_emit_message(true, 'bench', ({CONTEXT})::text);\n" + TPCB_BODY,
}
# The context as the Python package sends it by default with psycopg: a Bemi comment in front of
# every write statement (python/bemi/transport.py). The comment's text changes with the context
# (user_id here), so these scripts run with the simple protocol, as psycopg2 does anyway.
COMMENT = '/*Bemi {"user_id": :aid, "endpoint": "/pgbench/tpcb", "method": "POST"} Bemi*/ '
SCRIPTS["bemi_comment"] = TPCB_HEAD + "".join(
    (COMMENT + line if line.split(" ", 1)[0] in ("UPDATE", "INSERT") else line) + "\n"
    for line in TPCB_BODY.splitlines())
PGBENCH_TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]

AUDIT_SQL = """
CREATE TABLE bench_audit (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    operation text NOT NULL,
    "before" jsonb,
    "after" jsonb,
    context jsonb,
    transaction_id bigint NOT NULL DEFAULT txid_current(),
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION bench_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_audit (table_name, operation, "before", "after", context)
    VALUES (TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
            nullif(current_setting('bench.context', true), '')::jsonb);
    RETURN NULL;
END $$;
""" + "".join(f"CREATE TRIGGER bench_audit AFTER INSERT OR UPDATE OR DELETE ON {t} "
              f"FOR EACH ROW EXECUTE FUNCTION bench_audit();\n" for t in PGBENCH_TABLES)

CONFIGS = {
    # label, script, replica identity of the pgbench tables
    "a": ("(a) wal_level=logical, nothing capturing", "plain", "DEFAULT"),
    "b": ("(b) bemi, context in every transaction", "bemi", "FULL"),
    "c": ("(c) audit trigger (to_jsonb(OLD/NEW) + context)", "trigger", "DEFAULT"),
    "d": ("(d) wal2json slot + pg_recvlogical, context as message", "wal2json", "FULL"),
    # Where bemi's cost comes from: passing a context at all (one more statement per transaction,
    # nothing capturing), and capturing without one.
    "a2": ("(a2) nothing capturing, the context passed by one `set_config` statement", "trigger", "DEFAULT"),
    "b0": ("(b0) bemi, no context", "plain", "FULL"),
}
# Section 1c: the simple protocol, the context in a comment (see COMMENT).
COMMENT_CONFIGS = {
    "as": ("(a) nothing capturing, `-M simple`", "plain", "DEFAULT"),
    "bs": ("(b) bemi, the context as a Bemi comment on each write, `-M simple`", "bemi_comment", "FULL"),
}


class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        self.p = dict(MODES[self.mode])
        if args.scale:
            self.p["scale"] = args.scale
        self.workdir = tempfile.mkdtemp(prefix="bemi-bench.")
        self.logs = os.path.join(self.workdir, "pgbench")
        os.makedirs(self.logs)
        user = os.environ.get("BEMI_BENCH_SERVER_USER") if os.geteuid() == 0 else None
        if user:
            pw = pwd.getpwnam(user)
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        self.server = Server(self.workdir, args.port, user)
        for name, text in SCRIPTS.items():
            with open(os.path.join(self.workdir, f"{name}.sql"), "w") as f:
                f.write(text)
        self.sections = []
        self.summary = []
        self.notes = []
        self.recvlogical = None

    # -- setup ----------------------------------------------------------------------------------
    def setup(self):
        log(f"starting a throwaway server in {self.workdir} (port {self.args.port})")
        self.server.init({
            "wal_level": "logical",
            "shared_preload_libraries": "'bemi'",
            "output_plugin_libraries": "'pgoutput, test_decoding, bemi, wal2json'",
            "max_replication_slots": 16,
            "max_wal_senders": 16,
            "max_worker_processes": 16,
            "shared_buffers": "'512MB'",
            "max_wal_size": "'16GB'",
            "min_wal_size": "'1GB'",
            "checkpoint_timeout": "'30min'",
            "log_min_messages": "warning",
            "log_checkpoints": "off",
            # BEMI_BENCH_WRITERS: bemi.writers for every section but ingest (which sets its own)
            **({"bemi.writers": os.environ["BEMI_BENCH_WRITERS"]} if os.environ.get("BEMI_BENCH_WRITERS") else {}),
        })
        self.server.start()
        self.server.psql(f"CREATE DATABASE {DB}", db="postgres")
        log(f"pgbench -i -s {self.p['scale']}")
        subprocess.run([f"{BINDIR}/pgbench", *self.server.conninfo(), "-i", "-q", "-s", str(self.p["scale"])],
                       check=True, capture_output=True)
        self.server.psql("VACUUM ANALYZE")

    def teardown(self):
        if self.recvlogical:
            self.recvlogical.kill()
        if getattr(self, "dest", None):
            try:
                self.dest.stop()
            except Exception as e:
                log(f"stopping the destination failed: {e}")
        try:
            self.server.stop()
        except Exception as e:
            log(f"stopping the server failed: {e}")
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"kept {self.workdir}")

    # -- bemi helpers ---------------------------------------------------------------------------
    def create_bemi(self):
        self.server.psql("CREATE EXTENSION bemi")
        self.server.one("SELECT bemi_wait(timeout => '120 s')")
        return self.worker_pid()

    def worker_pid(self):
        return int(self.server.one("SELECT worker_pid FROM bemi_status()"))

    def drop_bemi(self):
        # The trail holds changes: say that dropping it is meant (docs/security.md).
        self.server.psql("SET bemi.allow_drop = on; DROP EXTENSION IF EXISTS bemi")

    def wait_bemi(self, lsn=None, timeout="60 min"):
        arg = f"'{lsn}'::pg_lsn" if lsn else "pg_current_wal_lsn()"
        t0 = time.monotonic()
        self.server.one(f"SELECT bemi_wait({arg}, '{timeout}')")
        return time.monotonic() - t0

    def stop_worker(self, pid):
        """SIGSTOPs the worker while it sleeps in WaitLatch (outside any transaction, holding no lock
        and no snapshot), so it costs nothing and holds back nothing; returns a release function."""
        for _ in range(2000):
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.002)
            try:
                with open(f"/proc/{pid}/syscall") as f:
                    nr = f.read().split()[0]
            except (OSError, IndexError):
                nr = ""
            if nr == "232":  # epoll_wait on x86_64: WaitLatch
                return lambda: os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
        raise RuntimeError("could not catch the worker asleep")

    def hold_worker(self):
        """Blocks the worker's next INSERT into bemi.changes: it decodes at most one more batch."""
        s = self.server.session()
        s.run("BEGIN; LOCK TABLE bemi.changes IN EXCLUSIVE MODE;")
        return s

    # -- write path -----------------------------------------------------------------------------
    def reset_pgbench(self, identity):
        self.server.psql("TRUNCATE pgbench_history;\n"
                         "VACUUM (ANALYZE) pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history;\n" +
                         "".join(f"ALTER TABLE {t} REPLICA IDENTITY {identity};\n" for t in PGBENCH_TABLES))

    def start_config(self, key, identity=None, bemi_sql=None):
        self.reset_pgbench(identity or {**CONFIGS, **COMMENT_CONFIGS}[key][2])
        state = {"pids": []}
        key = key[0]  # a2 is an a, b0 a b
        if key == "b":
            state["pids"].append(self.create_bemi())
            if bemi_sql:
                self.server.psql(bemi_sql)
        elif key == "c":
            self.server.psql(AUDIT_SQL)
        elif key == "d":
            self.server.psql("SELECT pg_create_logical_replication_slot('bench_w2j', 'wal2json')")
            self.recvlogical = subprocess.Popen(
                [f"{BINDIR}/pg_recvlogical", *self.server.conninfo(), "--slot", "bench_w2j", "--start",
                 "-o", "format-version=2", "-o", "include-timestamp=true", "-f", "-", "-s", "1", "-F", "0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(100):
                pid = self.server.one("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'bench_w2j'")
                if pid:
                    break
                time.sleep(0.1)
            state["pids"] += [int(pid), self.recvlogical.pid]
        self.server.psql("CHECKPOINT")
        return state

    def stop_config(self, key, state, end_lsn):
        """Waits until the capture has caught up with end_lsn (the drain time), then removes it."""
        drain = None
        key = key[0]
        if key == "b":
            drain = self.wait_bemi(end_lsn)
            state["captured"] = int(self.server.one(
                "SELECT count(*) FROM bemi.changes WHERE \"table\" LIKE 'pgbench%'"))
            state["with_context"] = int(self.server.one(
                "SELECT count(*) FROM bemi.changes WHERE \"table\" LIKE 'pgbench%' AND context ? 'user_id'"))
            self.drop_bemi()
        elif key == "c":
            state["captured"] = int(self.server.one("SELECT count(*) FROM bench_audit"))
            self.server.psql("".join(f"DROP TRIGGER bench_audit ON {t};\n" for t in PGBENCH_TABLES) +
                             "DROP TABLE bench_audit; DROP FUNCTION bench_audit();")
        elif key == "d":
            t0 = time.monotonic()
            while self.server.one(f"SELECT confirmed_flush_lsn >= '{end_lsn}' FROM pg_replication_slots "
                                  "WHERE slot_name = 'bench_w2j'") != "t":
                if self.recvlogical.poll() is not None:
                    raise RuntimeError("pg_recvlogical died: " + self.recvlogical.stderr.read().decode())
                time.sleep(0.05)
            drain = time.monotonic() - t0
            self.recvlogical.send_signal(signal.SIGINT)
            try:
                self.recvlogical.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.recvlogical.kill()
            self.recvlogical = None
            for _ in range(100):
                if self.server.one("SELECT active FROM pg_replication_slots WHERE slot_name = 'bench_w2j'") != "t":
                    break
                time.sleep(0.1)
            self.server.psql("SELECT pg_drop_replication_slot('bench_w2j')")
        return drain

    def pgbench(self, script, secs, clients, threads, tag, rate=None, mode="prepared"):
        prefix = os.path.join(self.logs, tag)
        cmd = [f"{BINDIR}/pgbench", *self.server.conninfo(), "-n", "-M", mode, "-c", str(clients),
               "-j", str(threads), "-T", str(secs), "-s", str(self.p["scale"]),
               "-f", os.path.join(self.workdir, f"{script}.sql"), "-l", f"--log-prefix={prefix}"]
        if rate:
            cmd += ["-R", str(rate)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pgbench failed: {r.stderr}\n{r.stdout}")
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", r.stdout)
        tps = float(m.group(1)) if m else None
        m = re.search(r"number of failed transactions: (\d+)", r.stdout)
        failed = int(m.group(1)) if m else 0
        lat = []
        for path in glob.glob(prefix + ".*"):
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 6 and parts[2].isdigit():
                        lat.append(int(parts[2]) / 1000.0)
            os.unlink(path)
        lat.sort()
        return dict(tps=tps, mean_ms=statistics.fmean(lat) if lat else None, p99_ms=percentile(lat, 0.99),
                    p50_ms=percentile(lat, 0.50), n=len(lat), failed=failed)

    def run_config(self, key, secs, clients, threads, tag, held=False, identity=None, script=None, mode="prepared",
                   bemi_sql=None):
        script = script or {**CONFIGS, **COMMENT_CONFIGS}[key][1]
        state = self.start_config(key, identity, bemi_sql)
        release = self.stop_worker(state["pids"][0]) if held else None
        cpu0 = [proc_cpu_seconds(p) for p in state["pids"]]
        lsn0 = self.server.one("SELECT pg_current_wal_lsn()")
        res = self.pgbench(script, secs, clients, threads, tag, mode=mode)
        lsn1 = self.server.one("SELECT pg_current_wal_lsn()")
        cpu1 = [proc_cpu_seconds(p) for p in state["pids"]]
        res["wal_bytes"] = int(float(self.server.one(f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')")))
        res["capture_cpu_s"] = sum(b - a for a, b in zip(cpu0, cpu1) if a is not None and b is not None) \
            if state["pids"] else None
        if release:
            release()
        res["drain_s"] = self.stop_config(key, state, lsn1)
        res["captured"] = state.get("captured")
        res["with_context"] = state.get("with_context")
        return res

    def section_wal(self):
        """1e: where the WAL of a write-path run goes, per relation (pg_waldump of the run)."""
        p = self.p
        secs = p["write_secs"]
        log(f"1e. WAL by relation: (a) and (b), {secs} s each, then pg_waldump")
        tables = {}
        for key in ("a", "b"):
            state = self.start_config(key)
            lsn0 = self.server.one("SELECT pg_current_wal_lsn()")
            res = self.pgbench(CONFIGS[key][1], secs, p["clients"], p["threads"], f"x{key}")
            lsn1 = self.server.one("SELECT pg_current_wal_lsn()")
            if key == "b":
                self.wait_bemi(lsn1)
                lsn1 = self.server.one("SELECT pg_current_wal_lsn()")  # the trail's rows of the run too
            names = dict(line.split("|", 1) for line in self.server.psql(
                "SELECT relfilenode, relname FROM pg_class WHERE relfilenode <> 0").splitlines())
            dump = self.server.as_user([f"{BINDIR}/pg_waldump", "-p", os.path.join(self.server.data, "pg_wal"),
                                        "-s", lsn0, "-e", lsn1]).stdout
            self.stop_config(key, state, lsn1)
            per = {}
            for line in dump.splitlines():
                m = re.search(r"rmgr: (\S+)\s+len \(rec/tot\):\s*\d+/\s*(\d+),.*?desc: (\S+)", line)
                if not m:
                    continue
                rel = re.search(r"blkref #0: rel \d+/\d+/(\d+)", line)
                what = names.get(rel.group(1), f"relfilenode {rel.group(1)}") if rel else f"({m.group(1)} {m.group(3)})"
                n, size, fpi = per.get(what, (0, 0, 0))
                per[what] = (n + 1, size + int(m.group(2)), fpi + (1 if " FPW" in line else 0))
            tables[key] = (res["n"], per)
        rows = []
        keys = sorted(set(tables["a"][1]) | set(tables["b"][1]),
                      key=lambda w: -tables["b"][1].get(w, (0, 0, 0))[1])
        for what in keys:
            cells = [what]
            for key in ("a", "b"):
                n_txn, per = tables[key]
                n, size, fpi = per.get(what, (0, 0, 0))
                cells += [fmt(size / max(n_txn, 1)), fmt(n / max(n_txn, 1), 2), fmt(fpi / max(n_txn, 1), 3)]
            rows.append(cells)
        totals = ["total"]
        for key in ("a", "b"):
            n_txn, per = tables[key]
            totals += [fmt(sum(v[1] for v in per.values()) / max(n_txn, 1)),
                       fmt(sum(v[0] for v in per.values()) / max(n_txn, 1), 2),
                       fmt(sum(v[2] for v in per.values()) / max(n_txn, 1), 3)]
        rows.append(totals)
        self.sections.append("\n".join([
            "### 1e. Where the WAL goes\n",
            f"One run of (a) and one of (b) as in section 1 ({secs} s each, a CHECKPOINT before each, as "
            "there), their WAL read back with `pg_waldump` (for (b) up to the point where the worker had "
            "written the run's changes), each record counted under the relation of its first block "
            "(records without one by their kind). Per pgbench transaction: bytes (full-page images "
            "included), records, and records carrying a full-page image.\n",
            md_table(["relation", "(a) B/txn", "(a) records/txn", "(a) FPI/txn", "(b) B/txn", "(b) records/txn",
                      "(b) FPI/txn"], rows), ""]))

    def section_comment_context(self):
        """1c: the context as the Python package sends it by default (a comment), simple protocol."""
        p = self.p
        rounds, secs = p["write_rounds"], p["write_secs"]
        keys = list(COMMENT_CONFIGS)
        results = {k: [] for k in keys}
        log(f"1c. the context as a comment: {len(keys)} configurations x {rounds} rounds x {secs} s, -M simple")
        for r in range(rounds):
            for k in (keys if r % 2 == 0 else keys[::-1]):
                res = self.run_config(k, secs, p["clients"], p["threads"], f"s{r}{k}", mode="simple")
                results[k].append(res)
                log(f"   round {r + 1} {k}: {res['tps']:.0f} tps, wal {res['wal_bytes'] / max(res['n'], 1):.0f} B/txn"
                    + (f", captured {res['captured']:,}, with context {res['with_context']:,}"
                       if res.get("captured") is not None else ""))
        rows = []
        for k in keys:
            rs = results[k]
            rows.append([COMMENT_CONFIGS[k][0], fmt(median([x["tps"] for x in rs])),
                         fmt(median([ratio(x["tps"], a["tps"]) for x, a in zip(rs, results["as"])]), 3),
                         fmt(median([x["p99_ms"] for x in rs]), 2),
                         fmt(median([x["wal_bytes"] / max(x["n"], 1) for x in rs])),
                         fmt(median([x["capture_cpu_s"] / secs * 100 if x["capture_cpu_s"] is not None else None
                                     for x in rs]), 0, " %")])
        b_ratio = median([ratio(b["tps"], a["tps"]) for b, a in zip(results["bs"], results["as"])])
        context_share = median([ratio(x["with_context"], x["captured"]) for x in results["bs"]])
        self.summary.append(("write path, context as a comment (`-M simple`): bemi TPS ≥ 0.85 × nothing capturing",
                             b_ratio is not None and b_ratio >= 0.85, f"{fmt(b_ratio, 3)} × (a)"))
        self.sections.append("\n".join([
            "### 1c. The context as a comment (the Python package's default with psycopg)\n",
            "The same pgbench transaction, with the context as `python/bemi` sends it by default with "
            "psycopg: a `/*Bemi {...} Bemi*/` comment in front of each write statement, its user_id "
            "the transaction's account. The comment's text changes per transaction, so both "
            f"configurations use `-M simple` (as psycopg2 always does). {rounds} rounds of {secs} s, "
            "interleaved; medians.\n",
            md_table(["configuration", "TPS", "× (a)", "p99 ms", "WAL/txn B", "capture CPU"], rows), "",
            f"Share of captured pgbench changes that carry the comment's context: {fmt(context_share, 3)}.\n"]))

    def section_write_path(self):
        p = self.p
        rounds, secs = p["write_rounds"], p["write_secs"]
        keys = list(CONFIGS)
        results = {k: [] for k in keys}
        log(f"1. write path: {len(keys)} configurations x {rounds} rounds x {secs} s, "
            f"{p['clients']} clients, scale {p['scale']}")
        for r in range(rounds):
            order = keys if r % 2 == 0 else keys[::-1]
            for k in order:
                res = self.run_config(k, secs, p["clients"], p["threads"], f"w{r}{k}")
                results[k].append(res)
                log(f"   round {r + 1} {k}: {res['tps']:.0f} tps, mean {res['mean_ms']:.2f} ms, "
                    f"p99 {res['p99_ms']:.2f} ms, wal {res['wal_bytes'] / max(res['n'], 1):.0f} B/txn"
                    + (f", capture cpu {res['capture_cpu_s']:.1f} s" if res['capture_cpu_s'] is not None else "")
                    + (f", drain {res['drain_s']:.2f} s" if res['drain_s'] is not None else ""))
        self.write_results = results

        def paired(k, field):
            return median([ratio(x[field], a[field]) for x, a in zip(results[k], results["a"])])

        rows = []
        for k in keys:
            rs = results[k]
            tps = median([x["tps"] for x in rs])
            mean = median([x["mean_ms"] for x in rs])
            p99 = median([x["p99_ms"] for x in rs])
            walb = median([x["wal_bytes"] / max(x["n"], 1) for x in rs])
            cpu = median([x["capture_cpu_s"] / secs * 100 if x["capture_cpu_s"] is not None else None for x in rs])
            drain = median([x["drain_s"] for x in rs])
            rows.append([CONFIGS[k][0], fmt(tps), fmt(paired(k, "tps"), 3), fmt(mean, 2), fmt(paired(k, "mean_ms"), 2),
                         fmt(p99, 2), fmt(paired(k, "p99_ms"), 2), fmt(walb), fmt(cpu, 0, " %"),
                         fmt(drain, 2, " s") if drain is not None else "–"])
        text = [f"## 1. Write-path cost\n",
                f"pgbench tpcb-like, scale {p['scale']}, {p['clients']} clients, {p['threads']} threads, "
                f"`-M prepared`, {secs} s per run, {rounds} rounds interleaved (in the order of the table, then reversed, …). "
                "Values are medians over rounds; ratios are medians of the per-round ratios to (a) of the "
                "same round. Latency from pgbench's per-transaction log. *WAL/txn* is all WAL written "
                "during the run (including the capture's own writes) per transaction. *capture CPU* is "
                "the CPU time of the capturing process(es) — bemi's worker; the walsender plus "
                "pg_recvlogical — as a share of one core. *catch-up* is the time from the end of the "
                "run until the capture had everything.\n",
                md_table(["configuration", "TPS", "× (a)", "mean ms", "× (a)", "p99 ms", "× (a)", "WAL/txn B",
                          "capture CPU", "catch-up"], rows), ""]
        raw = [[CONFIGS[k][0]] + [fmt(x["tps"]) for x in results[k]] for k in keys]
        text += ["<details><summary>TPS of every run</summary>\n",
                 md_table(["configuration"] + [f"round {i + 1}" for i in range(rounds)], raw), "\n</details>\n"]
        b_ratio = paired("b", "tps")
        b_vs_c = median([ratio(b["tps"], c["tps"]) for b, c in zip(results["b"], results["c"])])
        b_vs_d = median([ratio(b["tps"], d["tps"]) for b, d in zip(results["b"], results["d"])])
        self.summary.append(("write path: bemi TPS ≥ 0.85 × (a)", b_ratio is not None and b_ratio >= 0.85,
                             f"{fmt(b_ratio, 3)} × (a)"))
        b_vs_a2 = median([ratio(b["tps"], a2["tps"]) for b, a2 in zip(results["b"], results["a2"])])
        self.summary.append(("write path: bemi TPS ≥ 0.85 × (a2), the same context passed with nothing capturing",
                             b_vs_a2 is not None and b_vs_a2 >= 0.85, f"{fmt(b_vs_a2, 3)} × (a2)"))
        self.summary.append(("write path: bemi ahead of the audit trigger (c)", b_vs_c is not None and b_vs_c > 1,
                             f"{fmt(b_vs_c, 3)} × (c)"))
        self.summary.append(("write path: bemi ahead of wal2json + pg_recvlogical (d)",
                             b_vs_d is not None and b_vs_d > 1, f"{fmt(b_vs_d, 3)} × (d)"))
        self.b_max_tps = median([x["tps"] for x in results["b"]])
        self.sections.append("\n".join(text))

    def section_decomposition(self):
        """One client, so the numbers are per-transaction costs rather than contention."""
        p = self.p
        rounds, secs = p["solo_rounds"], p["solo_secs"]
        variants = [
            ("a", False, "plain: nothing capturing, replica identity DEFAULT"),
            ("a_full", False, "+ REPLICA IDENTITY FULL on the pgbench tables"),
            ("a_ctx", False, "+ one more statement per transaction (`set_config` of the context, nothing capturing)"),
            ("b_held", True, "+ bemi installed, `bemi_set_context` instead, worker held (backend cost only)"),
            ("b", False, "+ worker running (full bemi)"),
        ]
        log(f"1b. per-transaction decomposition: 1 client, {len(variants)} variants x {rounds} rounds x {secs} s")
        results = {v[0]: [] for v in variants}
        for r in range(rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for name, held, _ in order:
                key = {"a": "a", "a_full": "a", "a_ctx": "a", "b_held": "b", "b": "b"}[name]
                res = self.run_config(key, secs, 1, 1, f"s{r}{name}", held=held,
                                      identity="FULL" if name in ("a_full", "a_ctx") else None,
                                      script="trigger" if name == "a_ctx" else None)
                results[name].append(res)
                log(f"   round {r + 1} {name}: {res['mean_ms'] * 1000:.0f} us/txn, "
                    f"{res['wal_bytes'] / max(res['n'], 1):.0f} B WAL/txn")
        rows = []
        base = median([x["mean_ms"] for x in results["a"]]) * 1000
        prev = base
        for name, _, label in variants:
            us = median([x["mean_ms"] for x in results[name]]) * 1000
            walb = median([x["wal_bytes"] / max(x["n"], 1) for x in results[name]])
            rows.append([label, fmt(us), fmt(us - prev, 0, " µs") if name != "a" else "–",
                         fmt(us - base, 0, " µs") if name != "a" else "–", fmt(walb)])
            prev = us
        self.decomposition = results
        self.sections.append("\n".join([
            "### 1b. Where bemi's write-path cost comes from (one client)\n",
            f"pgbench with one client (`-c 1`), {secs} s per run, {rounds} rounds interleaved; each step adds one "
            "thing to the one above. Mean latency per transaction (medians over rounds). "
            "\"Worker held\": the worker is stopped (SIGSTOP, caught asleep in WaitLatch, so it holds no lock "
            "and no snapshot) and costs no CPU; it drains the backlog after the run.\n",
            md_table(["configuration", "µs/txn", "step", "vs plain", "WAL/txn B"], rows), ""]))

    def section_load_decomposition(self):
        """1d: under section 1's load, what of bemi's cost is the backends', decoding's, and writing's."""
        p = self.p
        rounds, secs = p["write_rounds"], p["write_secs"]
        variants = [
            ("a2", "a2", False, None, "(a2) nothing capturing, the context passed by `set_config`"),
            ("held", "b", True, None, "bemi, worker held: the backends' cost only (REPLICA IDENTITY FULL, "
                                      "`bemi_set_context`, bemi's hooks)"),
            ("ign", "b", False, "SELECT bemi_ignore('public.pgbench_*')",
             "bemi, every pgbench table ignored by a rule: all WAL decoded, nothing written"),
            # The context's GIN index is on each change before 0.5.0's bemi.contexts, on that table after.
            ("min", "b", False, "SET bemi.allow_drop = on; DROP INDEX bemi.changes_default_row_history, "
                                "bemi.changes_default_transaction; DROP INDEX IF EXISTS bemi.changes_default_context, "
                                "bemi.contexts_context",
             "bemi, the trail without its row-history, transaction and context indexes"),
            ("b", "b", False, None, "(b) bemi, the whole trail"),
        ]
        log(f"1d. the write path's cost under load: {len(variants)} variants x {rounds} rounds x {secs} s")
        results = {v[0]: [] for v in variants}
        for r in range(rounds):
            for name, key, held, sql, _ in (variants if r % 2 == 0 else variants[::-1]):
                res = self.run_config(key, secs, p["clients"], p["threads"], f"l{r}{name}", held=held, bemi_sql=sql,
                                      script="bemi" if key == "b" else None)
                results[name].append(res)
                log(f"   round {r + 1} {name}: {res['tps']:.0f} tps, wal {res['wal_bytes'] / max(res['n'], 1):.0f} B/txn"
                    + (f", worker cpu {res['capture_cpu_s']:.1f} s" if res.get("capture_cpu_s") is not None else ""))
        rows = []
        for name, _, held, _, label in variants:
            rs = results[name]
            rows.append([label, fmt(median([x["tps"] for x in rs])),
                         fmt(median([ratio(x["tps"], a["tps"]) for x, a in zip(rs, results["a2"])]), 3),
                         fmt(median([x["wal_bytes"] / max(x["n"], 1) for x in rs])),
                         fmt(median([x["capture_cpu_s"] / secs * 100 for x in rs]), 0, " %")
                         if name != "a2" and not held else "–"])
        self.sections.append("\n".join([
            "### 1d. Where bemi's write-path cost goes under load\n",
            f"Section 1's load (pgbench tpcb-like, {p['clients']} clients, `-M prepared`, {secs} s per run, {rounds} "
            "rounds interleaved, medians) with bemi's script, taking bemi apart: the worker held (SIGSTOP, as in "
            "1b; it drains after the run), a rule that makes the worker decode every change and write none, "
            "and the trail without its three secondary indexes (heap, primary key and BRIN only). "
            "*worker CPU*: the worker's CPU time as a share of one core.\n",
            md_table(["configuration", "TPS", "× (a2)", "WAL/txn B", "worker CPU"], rows), ""]))

    # -- lag ------------------------------------------------------------------------------------
    def section_lag(self):
        p = self.p
        rate = max(1, int(0.8 * self.b_max_tps))
        log(f"3. lag: pgbench -R {rate} for {p['lag_secs']} s")
        self.reset_pgbench("FULL")
        self.create_bemi()
        res = self.pgbench("bemi", p["lag_secs"], p["clients"], p["threads"], "lag", rate=rate)
        self.wait_bemi()
        # Rows written by one worker transaction share its xmin and become visible together, when it
        # commits: just after the last of them was built (clock_timestamp() in created_at).
        row = self.server.one("""
            SELECT count(*), count(DISTINCT x),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY v), percentile_cont(0.99) WITHIN GROUP (ORDER BY v),
                   max(v),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY w), percentile_cont(0.99) WITHIN GROUP (ORDER BY w)
              FROM (SELECT x, extract(epoch FROM max(created_at) OVER (PARTITION BY x) - committed_at) * 1000 AS v,
                           extract(epoch FROM created_at - committed_at) * 1000 AS w
                      FROM (SELECT xmin::text::bigint AS x, created_at, committed_at FROM bemi.changes
                             WHERE "table" LIKE 'pgbench%') r) s""")
        n, batches, p50, p99, mx, c50, c99 = row.split("|")
        n, batches = int(n), int(batches)
        p50, p99, mx, c50, c99 = float(p50), float(p99), float(mx), float(c50), float(c99)
        self.drop_bemi()
        rows = [["commit → visible (its batch's last row built, then committed)", fmt(p50, 1), fmt(p99, 1), fmt(mx, 1)],
                ["commit → its own row built (`created_at`)", fmt(c50, 1), fmt(c99, 1), "–"]]
        self.summary.append(("lag: p50 < 50 ms", p50 < 50, f"p50 {p50:.1f} ms"))
        self.summary.append(("lag: p99 < 500 ms", p99 < 500, f"p99 {p99:.1f} ms"))
        self.sections.append("\n".join([
            "## 3. Lag\n",
            f"pgbench with bemi's script at `--rate {rate}` (80% of bemi's median TPS in section 1), "
            f"{p['clients']} clients, {p['lag_secs']} s; achieved {fmt(res['tps'])} TPS, client latency mean "
            f"{fmt(res['mean_ms'], 2)} ms / p99 {fmt(res['p99_ms'], 2)} ms. Over the {n:,} changes written "
            f"(in {batches:,} worker transactions), minus `committed_at` (the user transaction's commit time): "
            "*visible* is the `created_at` (clock_timestamp()) of the last row of the worker transaction that "
            "wrote the change, i.e. when the row became visible short of that transaction's commit (a WAL "
            "flush, well under a millisecond here). `pg_xact_commit_timestamp` cannot be used: the worker "
            "commits under a replication origin, so its commit timestamps are the origin's, not the clock.\n",
            md_table(["", "p50 ms", "p99 ms", "max ms"], rows), ""]))

    # -- ingest ---------------------------------------------------------------------------------
    INGEST_TABLE = """
CREATE TABLE {t} (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    note text,
    amount numeric(14, 2),
    qty integer,
    price double precision,
    active boolean,
    created_at timestamptz,
    updated_at timestamptz,
    attrs jsonb);
ALTER TABLE {t} REPLICA IDENTITY FULL;
"""
    INGEST_ROWS = """SELECT g, 'customer ' || g, repeat(md5(g::text), 2), (g % 100000) / 100.0, (g % 1000)::int,
       g * 1.25, g % 3 = 0, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', now(),
       jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b', g % 10), 'nested', jsonb_build_object('x', g % 7))
  FROM generate_series({lo}, {hi}) g"""

    def create_backlog_procedure(self):
        """bench_ingest and bench_backlog(n_ins, n_upd, n_del, chunk): the ingest backlog's shape."""
        srv = self.server
        srv.psql(self.INGEST_TABLE.format(t="bench_ingest"))
        srv.psql(f"""
CREATE PROCEDURE bench_backlog(n_ins bigint, n_upd bigint, n_del bigint, chunk int) LANGUAGE plpgsql AS $$
DECLARE lo bigint;
BEGIN
    lo := 1;
    WHILE lo <= n_ins LOOP
        INSERT INTO bench_ingest {self.INGEST_ROWS.format(lo='lo', hi='least(lo + chunk - 1, n_ins)')};
        COMMIT;
        lo := lo + chunk;
    END LOOP;
    lo := 1;
    WHILE lo <= n_upd LOOP
        UPDATE bench_ingest SET amount = amount + 1, qty = qty + 1, updated_at = now(), note = left(note, 40)
         WHERE id BETWEEN lo AND least(lo + chunk - 1, n_upd);
        COMMIT;
        lo := lo + chunk;
    END LOOP;
    lo := n_ins - n_del + 1;
    WHILE lo <= n_ins LOOP
        DELETE FROM bench_ingest WHERE id BETWEEN lo AND least(lo + chunk - 1, n_ins);
        COMMIT;
        lo := lo + chunk;
    END LOOP;
END $$;""")

    INGEST_WRITERS = [0, 1, 2, 4]

    def writer_pids(self):
        return [int(x) for x in self.server.one(
            "SELECT coalesce(string_agg(pid::text, ' ' ORDER BY pid), '') FROM pg_stat_activity "
            "WHERE backend_type = 'bemi writer' AND datname = current_database()").split()]

    def ingest_round(self, writers, n_ins, n_upd, n_del, chunk, reference):
        """One drain of the backlog with bemi.writers = writers; with reference, test_decoding and
        the bemi plugin through SQL read the same WAL first (while the worker is held)."""
        srv = self.server
        srv.psql(f"ALTER SYSTEM SET bemi.writers = {writers}; SELECT pg_reload_conf();")
        time.sleep(0.2)
        self.create_backlog_procedure()
        pid = self.create_bemi()
        out = {"writers": writers}
        if reference:
            srv.psql("SELECT pg_create_logical_replication_slot('bench_td', 'test_decoding');"
                     "SELECT pg_create_logical_replication_slot('bench_bemi_sql', 'bemi');")
        holder = self.hold_worker()
        lsn0 = srv.one("SELECT pg_current_wal_lsn()")
        t0 = time.monotonic()
        srv.psql(f"CALL bench_backlog({n_ins}, {n_upd}, {n_del}, {chunk})")
        out["build_s"] = time.monotonic() - t0
        lsn1 = srv.one("SELECT pg_current_wal_lsn()")
        out["wal"] = int(float(srv.one(f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')")))
        srv.psql("CHECKPOINT")
        # The backlog started the writers (its first full batch), which wait for the held lock:
        # their start is not in the timed drain, as it is not in a real one (~20 ms per backlog).
        wpids = self.writer_pids()
        for _ in range(100):
            if len(wpids) >= writers:
                break
            time.sleep(0.1)
            wpids = self.writer_pids()
        out["started"] = len(wpids)
        log(f"   writers={writers}: backlog built in {out['build_s']:.1f} s ({out['wal'] / 1e6:.0f} MB of WAL)")
        if reference:
            t0 = time.monotonic()
            out["td"] = int(srv.one("SELECT count(*) FROM pg_logical_slot_get_changes('bench_td', NULL, NULL) "
                                    "WHERE data LIKE 'table public.bench_ingest:%'"))
            out["td_s"] = time.monotonic() - t0
            srv.psql("SELECT pg_drop_replication_slot('bench_td')")
            log(f"   test_decoding: {out['td']:,} changes in {out['td_s']:.1f} s; bemi plugin through SQL")
            t0 = time.monotonic()
            out["bsql"] = int(srv.one("SELECT count(*) FROM pg_logical_slot_get_changes('bench_bemi_sql', NULL, NULL)"))
            out["bsql_s"] = time.monotonic() - t0
            srv.psql("SELECT pg_drop_replication_slot('bench_bemi_sql')")
        out["before"] = int(srv.one("SELECT count(*) FROM bemi.changes"))
        # With --profile: the worker doing everything (writers = 0), and the one writer of the
        # default (writers = 1), where the drain is bound by the writer.
        perf = None
        if self.args.profile and writers == 0:
            perf = self.start_perf(pid, "ingest")
        elif self.args.profile and writers == 1 and wpids:
            perf = self.start_perf(wpids[0], "ingest-writer")
        cpu0 = proc_cpu_seconds(pid)
        wcpu0 = [proc_cpu_seconds(w) for w in wpids]
        t0 = time.monotonic()
        holder.run("ROLLBACK;")
        srv.one(f"SELECT bemi_wait('{lsn1}', '60 min')")
        out["drain_s"] = time.monotonic() - t0
        cpu1 = proc_cpu_seconds(pid)
        wcpu1 = [proc_cpu_seconds(w) for w in wpids]
        if perf:
            self.stop_perf(perf)
        holder.close()
        out["got"] = int(srv.one("SELECT count(*) FROM bemi.changes WHERE \"table\" = 'bench_ingest'"))
        out["same_pid"] = self.worker_pid() == pid and self.writer_pids() == wpids
        out["cpu"] = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
        out["wcpu"] = (sum(b - a for a, b in zip(wcpu0, wcpu1)) if wpids and None not in wcpu0 + wcpu1
                       else (0.0 if not wpids else None))
        self.drop_bemi()
        srv.psql("DROP TABLE bench_ingest; DROP PROCEDURE bench_backlog")
        log(f"   writers={writers}: {out['got']:,} changes drained in {out['drain_s']:.1f} s")
        return out

    def section_ingest(self):
        n = self.p["backlog"]
        n_ins, n_upd = n // 2, n * 7 // 20
        n_del = n - n_ins - n_upd
        chunk = 1000
        log(f"2. ingest: backlog of {n:,} changes ({n_ins:,} inserts, {n_upd:,} updates, {n_del:,} deletes, "
            f"{chunk} per transaction), drained with bemi.writers = {', '.join(map(str, self.INGEST_WRITERS))}")
        srv = self.server
        default = srv.one("SELECT boot_val FROM pg_settings WHERE name = 'bemi.writers'")
        runs = [self.ingest_round(w, n_ins, n_upd, n_del, chunk, reference=(i == 0))
                for i, w in enumerate(self.INGEST_WRITERS)]
        srv.psql("ALTER SYSTEM RESET bemi.writers; SELECT pg_reload_conf();")
        ref = runs[0]
        td, td_s, bsql, bsql_s = ref["td"], ref["td_s"], ref["bsql"], ref["bsql_s"]
        td_rate = td / td_s
        rows = []
        for r in runs:
            rate = r["got"] / r["drain_s"]
            r["rate"] = rate
            per = (lambda c: fmt(c / r["got"] * 1e6, 1) if c is not None and r["got"] else "–")
            label = (f"bemi worker, `bemi.writers = {r['writers']}`" + (" (default)" if str(r["writers"]) == default else "")
                     + ("" if r["started"] == r["writers"] else f" ({r['started']} started)")
                     + ("" if r["same_pid"] else " — **a process restarted during the drain**"))
            rows.append([label, fmt(r["got"]), fmt(r["drain_s"], 1), fmt(rate), fmt(rate / td_rate, 2),
                         fmt(r["cpu"], 1), fmt(r["wcpu"], 1), per(r["cpu"]),
                         per(r["cpu"] + r["wcpu"] if r["cpu"] is not None and r["wcpu"] is not None else None)])
        rows.append(["test_decoding, `pg_logical_slot_get_changes` + count", fmt(td), fmt(td_s, 1), fmt(td_rate),
                     "1.00", "", "", "", ""])
        rows.append(["bemi plugin, `pg_logical_slot_get_changes` + count (decode + images, no insert)", fmt(bsql),
                     fmt(bsql_s, 1), fmt(bsql / bsql_s), fmt(bsql / bsql_s / td_rate, 2), "", "", "", ""])
        best = max(runs, key=lambda r: r["rate"])
        dflt = next((r for r in runs if str(r["writers"]) == default), best)
        self.summary.append(("ingest: ≥ 100,000 changes/s", dflt["rate"] >= 100_000,
                             f"{dflt['rate']:,.0f} changes/s (bemi.writers = {dflt['writers']})"))
        self.summary.append(("ingest: ≥ 0.75 × test_decoding", dflt["rate"] / td_rate >= 0.75,
                             f"{dflt['rate'] / td_rate:.2f} × ({td_rate:,.0f} changes/s), bemi.writers = {dflt['writers']}"))
        for r in runs:
            if r["got"] != n:
                self.notes.append(f"ingest (bemi.writers = {r['writers']}): expected {n:,} rows in bemi.changes, "
                                  f"found {r['got']:,}")
        self.sections.append("\n".join([
            "## 2. Ingest throughput\n",
            f"A backlog of {n:,} changes on a 10-column table (text, numeric, integer, float, boolean, two "
            f"timestamptz, jsonb; REPLICA IDENTITY FULL): {n_ins:,} inserts, {n_upd:,} updates, {n_del:,} "
            f"deletes, {chunk} changes per transaction, {ref['wal'] / 1e6:,.0f} MB of WAL, built while the worker "
            "was held (a session holding `LOCK TABLE bemi.changes IN EXCLUSIVE MODE`: the worker, or each "
            "writer, blocks on its first INSERT; with writers, which the backlog's first full batch starts, the "
            "decoder goes on until every writer's queue is full, i.e. at most one batch per writer plus 4 MB "
            "per writer plus one batch are decoded ahead). The same backlog is built and drained once per `bemi.writers` setting, one after "
            "the other. Timed: from releasing the lock to `bemi_wait(<LSN at the end of the backlog>)` "
            "returning, i.e. decoding the backlog, building the images, inserting the rows with their indexes "
            "and committing. test_decoding and the bemi plugin through SQL read the WAL of the first round "
            "through their own slots (created before the backlog, timed one after the other while the "
            "worker was still held, so nothing ran concurrently). CPU: of the worker (decoding, and writing "
            "when it has no writers) and of all its writers together, during the drain.\n",
            md_table(["reader", "changes", "seconds", "changes/s", "× test_decoding", "worker CPU s",
                      "writers CPU s", "µs worker CPU / change", "µs total CPU / change"], rows), ""]))

    # -- hash chain: verification ----------------------------------------------------------------
    def section_verify(self):
        """bemi_verify() over a trail of the ingest backlog's shape: changes checked per second."""
        n = self.p["backlog"]
        n_ins, n_upd = n // 2, n * 7 // 20
        n_del = n - n_ins - n_upd
        srv = self.server
        log(f"7. verify: bemi_verify() over a trail of {n:,} changes")
        self.create_backlog_procedure()
        self.create_bemi()
        srv.psql(f"CALL bench_backlog({n_ins}, {n_upd}, {n_del}, 1000)")
        self.wait_bemi()
        total = int(srv.one("SELECT count(*) FROM bemi.changes"))
        avg = int(float(srv.one("SELECT avg(pg_column_size(c.*)) FROM bemi.changes c")))
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            problems = srv.one("SELECT count(*) FROM bemi_verify()")
            times.append(time.monotonic() - t0)
            if problems != "0":
                self.notes.append(f"verify: bemi_verify() reported {problems} problem(s) on an intact trail")
        t0 = time.monotonic()
        srv.one("SELECT count(*) FROM (SELECT * FROM bemi.changes ORDER BY id) c")
        read_s = time.monotonic() - t0
        secs = median(times)
        self.drop_bemi()
        srv.psql("DROP TABLE bench_ingest; DROP PROCEDURE bench_backlog")
        rate = total / secs
        self.summary.append(("verify: ≥ 100,000 changes/s", rate >= 100_000, f"{rate:,.0f} changes/s"))
        self.sections.append("\n".join([
            "## 7. Hash chain: verification\n",
            f"`bemi_verify()` over a trail of {total:,} changes of the ingest backlog's shape (section 2; "
            f"{avg} bytes per row on average), written by the worker; median of 3 runs, the trail in cache. "
            "For scale: reading the same rows in id order (`SELECT * FROM bemi.changes ORDER BY id`).\n",
            md_table(["what", "changes", "seconds", "changes/s"],
                     [["`bemi_verify()`", fmt(total), fmt(secs, 2), fmt(rate)],
                      ["`SELECT * ... ORDER BY id` (reading alone)", fmt(total), fmt(read_s, 2),
                       fmt(total / read_s)]]), ""]))

    # -- tracking rules -------------------------------------------------------------------------
    # 100 rules shaped like a real deployment's: two wide ones that match every table (ignored
    # timestamp columns, masked secret columns, none of which the backlog's updates touch alone or
    # has), and 98 for other schemas and tables (ignored scratch schemas, masked e-mails).
    RULES_100 = ("SELECT bemi_ignore('*.*', '{updated_at, *_cached_at}');\n"
                 "SELECT bemi_mask('*.*', '{password*, *_token, *_secret}');\n"
                 "SELECT bemi_ignore(format('scratch_%s.*', g)) FROM generate_series(1, 49) g;\n"
                 "SELECT bemi_mask(format('app_%s.users', g), '{email, phone}', 'hash') FROM generate_series(1, 49) g;\n")
    RULE_CASES = [
        ("none", "no rules", ""),
        ("r100", "100 rules (two match the table, on columns no change touches alone)", RULES_100),
        ("mask", "the 100 rules + `bemi_mask('public.bench_ingest', '{note}', 'hash')`",
         RULES_100 + "SELECT bemi_mask('public.bench_ingest', '{note}', 'hash');\n"),
        ("ignored", "the 100 rules + `bemi_ignore('public.bench_ingest')`: every change skipped",
         RULES_100 + "SELECT bemi_ignore('public.bench_ingest');\n"),
    ]

    def drain_with_rules(self, rules_sql, n_ins, n_upd, n_del, chunk):
        """One backlog made under the given rules while the worker is held, then drained; returns
        (seconds to drain, rows recorded, rules in force)."""
        srv = self.server
        srv.psql("TRUNCATE bench_ingest")
        self.create_bemi()
        if rules_sql:
            srv.psql(rules_sql)
        n_rules = int(srv.one("SELECT count(*) FROM bemi.rules"))
        srv.one("SELECT bemi_wait(timeout => '10 min')")
        # Held by SIGSTOP, not by a lock on bemi.changes: a worker that records nothing (an ignored
        # table) would never reach the lock and drain the backlog while it is being made.
        release = self.stop_worker(self.worker_pid())
        srv.psql(f"CALL bench_backlog({n_ins}, {n_upd}, {n_del}, {chunk})")
        lsn = srv.one("SELECT pg_current_wal_lsn()")
        srv.psql("CHECKPOINT")
        pending = int(float(srv.one(f"SELECT pg_wal_lsn_diff('{lsn}', confirmed_flush_lsn) FROM pg_replication_slots "
                                    "WHERE plugin = 'bemi' AND database = current_database()")))
        log(f"   {pending / 1e6:.0f} MB of WAL pending when released")
        t0 = time.monotonic()
        release()
        srv.one(f"SELECT bemi_wait('{lsn}', '60 min')")
        drain_s = time.monotonic() - t0
        got = int(srv.one("SELECT count(*) FROM bemi.changes WHERE \"table\" = 'bench_ingest'"))
        self.drop_bemi()
        return drain_s, got, n_rules

    def section_rules(self):
        n = self.p["rules_backlog"]
        n_ins, n_upd = n // 2, n * 7 // 20
        n_del = n - n_ins - n_upd
        rounds = self.p["rules_rounds"]
        log(f"6. rules: a backlog of {n:,} changes drained under {len(self.RULE_CASES)} rule sets, "
            f"{rounds} rounds")
        self.create_backlog_procedure()
        times = {k: [] for k, _, _ in self.RULE_CASES}
        got = {}
        n_rules = {}
        for r in range(rounds):
            order = self.RULE_CASES if r % 2 == 0 else list(reversed(self.RULE_CASES))
            for key, _, sql in order:
                s, g, nr = self.drain_with_rules(sql, n_ins, n_upd, n_del, 1000)
                times[key].append(s)
                got[key], n_rules[key] = g, nr
                log(f"   round {r + 1} {key}: {n:,} changes drained in {s:.2f} s, {g:,} recorded")
        self.server.psql("DROP TABLE bench_ingest; DROP PROCEDURE bench_backlog")
        med = {k: median(v) for k, v in times.items()}
        base = med["none"]
        rows = [[desc, fmt(n_rules[k]), fmt(got[k]), fmt(med[k], 2), fmt(n / med[k]), fmt(n / med[k] / (n / base), 2),
                 fmt(med[k] / n * 1e6, 2)] for k, desc, _ in self.RULE_CASES]
        cost_100 = med["r100"] / base - 1
        skip_share = med["ignored"] / base
        self.summary.append(("rules: 100 rules cost ≤ 5% of ingest", cost_100 <= 0.05,
                             f"{cost_100 * 100:+.1f}% drain time"))
        self.summary.append(("rules: a skipped change costs a small fraction of a recorded one", skip_share <= 0.35,
                             f"{skip_share:.2f} × a recorded change's drain time"))
        if got["none"] != n or got["r100"] != n or got["mask"] != n or got["ignored"] != 0:
            self.notes.append(f"rules: unexpected rows recorded {got}")
        self.sections.append("\n".join([
            "## 6. Tracking rules at ingest\n",
            f"The ingest backlog's shape (section 2), {n:,} changes ({n_ins:,} inserts, {n_upd:,} updates, "
            f"{n_del:,} deletes, 1000 per transaction), made while the worker was held under each rule set "
            "(rules are judged when a change is made, so each set gets its own backlog on a fresh "
            "`CREATE EXTENSION`; the worker stopped by SIGSTOP while asleep), then drained: from releasing the worker to `bemi_wait(<end of the "
            f"backlog>)`. Median of {rounds} rounds, rule sets interleaved. The 100 rules: "
            "`bemi_ignore('*.*', '{updated_at, *_cached_at}')`, `bemi_mask('*.*', '{password*, *_token, "
            "*_secret}')`, 49 `bemi_ignore('scratch_N.*')`, 49 `bemi_mask('app_N.users', '{email, phone}', "
            "'hash')`. Rules are matched once per table and kept with the decoding's relation entry, so "
            "their number costs nothing per change; what remains per change is the ignored-columns test on "
            "an UPDATE and the mask itself.\n",
            md_table(["rules", "rules in force", "recorded", "drain s", "changes/s", "× no rules",
                      "µs per change"], rows), ""]))

    # -- memory ---------------------------------------------------------------------------------
    def section_memory(self):
        n = self.p["huge"]
        srv = self.server
        log(f"4. memory: one transaction of {n:,} inserts")
        srv.psql(self.INGEST_TABLE.format(t="bench_huge"))
        pid = self.create_bemi()
        # A fresh worker process, so its high-water mark covers this transaction only.
        srv.psql("SELECT pg_terminate_backend(worker_pid) FROM bemi_status()")
        for _ in range(600):
            time.sleep(0.1)
            new = srv.one("SELECT worker_pid FROM bemi_status()")
            if new and int(new) != pid:
                break
        self.wait_bemi(timeout="120 s")
        pid = self.worker_pid()
        start = proc_status_kb(pid)
        # The writers of this worker (bemi.writers; the transaction's first full batch starts them):
        # their private memory is the worker's too.
        wpeak = {}
        lsn0 = srv.one("SELECT pg_current_wal_lsn()")
        t0 = time.monotonic()
        loader = subprocess.Popen([f"{BINDIR}/psql", *srv.conninfo(), "-XAtq", "-v", "ON_ERROR_STOP=1", "-c",
                                   f"INSERT INTO bench_huge {self.INGEST_ROWS.format(lo=1, hi=n)}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0}
        spool_peak = 0
        tmpdirs = [os.path.join(srv.data, "pgsql_tmp"), os.path.join(srv.data, "base", "pgsql_tmp")]
        waiter = None
        commit_t = None
        while True:
            st = proc_status_kb(pid)
            for k in peak:
                peak[k] = max(peak[k], st.get(k, 0))
            for w in self.writer_pids():
                wpeak[w] = max(wpeak.get(w, 0), proc_status_kb(w).get("RssAnon", 0))
            spool = 0
            for d in tmpdirs:
                try:
                    spool += sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.startswith("bemi_spool"))
                except OSError:
                    pass
            spool_peak = max(spool_peak, spool)
            if waiter is None and loader.poll() is not None:
                if loader.returncode != 0:
                    raise RuntimeError("loading the huge transaction failed: " + loader.stderr.read().decode())
                commit_t = time.monotonic()
                lsn1 = srv.one("SELECT pg_current_wal_lsn()")
                waiter = subprocess.Popen([f"{BINDIR}/psql", *srv.conninfo(), "-XAtq", "-c",
                                           f"SELECT bemi_wait('{lsn1}', '60 min')"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if waiter is not None and waiter.poll() is not None:
                if waiter.returncode != 0:
                    raise RuntimeError("bemi_wait failed: " + waiter.stderr.read().decode())
                break
            time.sleep(0.1)
        done_t = time.monotonic()
        end = proc_status_kb(pid)
        peak["VmHWM"] = max(peak["VmHWM"], end.get("VmHWM", 0))
        got = int(srv.one("SELECT count(*) FROM bemi.changes WHERE \"table\" = 'bench_huge'"))
        same_pid = self.worker_pid() == pid
        wal = int(float(srv.one(f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')")))
        self.drop_bemi()
        srv.psql("DROP TABLE bench_huge")
        mb = lambda kb: kb / 1024.0
        private_peak = mb(peak["RssAnon"])
        writer_peak = mb(max(wpeak.values(), default=0))
        rows = [["peak RSS (VmHWM, includes shared buffers the worker touched)", fmt(mb(peak["VmHWM"]), 0, " MB")],
                ["peak private memory (RssAnon, sampled every 0.1 s)", fmt(private_peak, 0, " MB")],
                ["peak shared memory mapped (RssShmem, sampled)", fmt(mb(peak["RssShmem"]), 0, " MB")],
                [f"peak private memory of each of its {len(wpeak)} writers (RssAnon, sampled; the largest)",
                 fmt(writer_peak, 0, " MB")],
                ["RSS of the fresh worker before the transaction", fmt(mb(start.get("VmRSS", 0)), 0, " MB")],
                ["peak size of the worker's spool file", fmt(spool_peak / 2**20, 0, " MB")],
                ["time from COMMIT to all rows visible", fmt(done_t - commit_t, 1, " s")],
                ["rate from COMMIT to all rows visible", fmt(got / (done_t - commit_t), 0, " changes/s")]]
        self.summary.append(("memory: worker peak RSS < 256 MB while draining one "
                             f"{n / 1e6:g}M-change transaction (private memory; VmHWM also counts shared buffers)",
                             private_peak < 256,
                             f"private {private_peak:.0f} MB (each of {len(wpeak)} writers ≤ {writer_peak:.0f} MB); "
                             f"VmHWM {mb(peak['VmHWM']):.0f} MB of which shared ≤ {mb(peak['RssShmem']):.0f} MB"))
        if got != n:
            self.notes.append(f"memory: expected {n:,} rows in bemi.changes, found {got:,}")
        self.sections.append("\n".join([
            "## 4. Memory\n",
            f"One transaction: `INSERT … SELECT … generate_series(1, {n:,})` into the same 10-column table "
            f"({wal / 1e6:,.0f} MB of WAL), with a fresh worker process (terminated and restarted before, so "
            "its high-water mark covers this transaction only). Sampled from /proc/<pid>/status of the worker "
            "and of each of its writers while the transaction was loaded, decoded and written. The goal is checked against private "
            "memory: VmHWM also counts every page of shared buffers the worker touched (up to "
            "shared_buffers = 512MB here), which is the server's memory, not the worker's"
            + ("" if same_pid else " — **the worker restarted during the run**") + ".\n",
            md_table(["", "value"], rows), ""]))

    # -- reads hook -----------------------------------------------------------------------------
    def section_reads(self):
        hooks = sorted(p for p in glob.glob(os.path.join(HERE, "reads*"))
                       if os.path.isfile(p) and not p.endswith((".md", "~")))
        if not hooks:
            self.sections.append("## 5. Reads\n\nNo `bench/reads*` script yet (see bench/README.md).\n")
            return
        out = ["## 5. Reads\n"]
        for path in hooks:
            log(f"5. reads: {os.path.basename(path)}")
            env = dict(self.server.env(), BEMI_BENCH_MODE=self.mode, BEMI_BENCH_WORKDIR=self.workdir,
                       BEMI_BENCH_BINDIR=BINDIR)
            if path.endswith(".sql"):
                cmd = [f"{BINDIR}/psql", "-X", "-v", "ON_ERROR_STOP=1", "-f", path]
            elif path.endswith(".py"):
                cmd = [sys.executable, path]
            elif path.endswith(".sh"):
                cmd = ["bash", path]
            else:
                cmd = [path]
            t0 = time.monotonic()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            took = time.monotonic() - t0
            if r.returncode != 0:
                out.append(f"`{os.path.basename(path)}` **failed** (exit {r.returncode}):\n\n```\n"
                           f"{(r.stderr or r.stdout)[-3000:]}\n```\n")
                self.notes.append(f"reads: {os.path.basename(path)} failed")
            else:
                out.append(r.stdout.strip() + f"\n\n_(`{os.path.basename(path)}`, {took:.0f} s)_\n")
        self.sections.append("\n".join(out))

    # -- profiling ------------------------------------------------------------------------------
    def start_perf(self, pid, tag):
        if shutil.which("perf") is None:
            self.notes.append("perf is not installed: no profile")
            return None
        path = os.path.join(self.workdir, f"perf.{tag}.data")
        p = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-p", str(pid), "-o", path],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        return (p, path, tag)

    def stop_perf(self, perf):
        p, path, tag = perf
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        dest = os.path.join(HERE, f"profile-{tag}.txt")
        self_r = subprocess.run(["perf", "report", "-i", path, "--stdio", "--no-children", "--sort", "dso,sym",
                                 "-g", "none", "--percent-limit", "0.5"], capture_output=True, text=True)
        children = subprocess.run(["perf", "report", "-i", path, "--stdio", "--children", "--sort", "sym",
                                   "-g", "none", "--percent-limit", "2"], capture_output=True, text=True)
        # The hash chain's share (issue 15): its functions with what they call, below any cutoff.
        every = subprocess.run(["perf", "report", "-i", path, "--stdio", "--children", "--sort", "sym",
                                "-g", "none", "--percent-limit", "0"], capture_output=True, text=True)
        chain = [line for line in every.stdout.splitlines()
                 if re.search(r"ChainDigest|ChainLink|Batch::Digest|LinkRows|LinkRange|AdvanceHead", line)]
        with open(dest, "w") as f:
            f.write(f"# perf profile of the bemi {'writer' if tag.endswith('-writer') else 'worker'} during {tag} (cpu-clock, 999 Hz)\n\n## self time\n")
            f.write(self_r.stdout)
            f.write("\n\n## including callees (children)\n")
            f.write(children.stdout)
            f.write("\n\n## the hash chain: its functions, including what they call (SHA-256 and all)\n")
            f.write("\n".join(chain) + "\n")
        log(f"   profile written to {dest}")

    def profile_write_path(self):
        """Profile of bemi's pgbench configuration: the backends' and the worker's time, separately."""
        if shutil.which("perf") is None:
            return
        p = self.p
        log("profile: perf on every process of the server during a bemi pgbench run")
        state = self.start_config("b")
        worker = state["pids"][0]
        path = os.path.join(self.workdir, "perf.write.data")
        perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-a", "-o", path],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        with open(os.path.join(self.server.data, "postmaster.pid")) as f:
            postmaster = f.readline().strip()
        seen = set()
        done = threading.Event()

        def collect():  # the server's processes, backends included, while they exist
            while not done.is_set():
                seen.update(subprocess.run(["pgrep", "-P", postmaster], capture_output=True, text=True).stdout.split())
                time.sleep(0.5)
        collector = threading.Thread(target=collect)
        collector.start()
        res = self.pgbench("bemi", p["solo_secs"] * 2, p["clients"], p["threads"], "prof")
        done.set()
        collector.join()
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=120)
        server_pids = sorted(seen)
        backends = []
        self.stop_config("b", state, self.server.one("SELECT pg_current_wal_lsn()"))

        def report(pids, sort, limit, children=False):
            return subprocess.run(["perf", "report", "-i", path, "--stdio", "--children" if children else "--no-children",
                                   "--pid", ",".join(pids), "--percentage", "relative", "--sort", sort, "-g", "none",
                                   "--percent-limit", limit],
                                  capture_output=True, text=True).stdout
        by_pid = report(server_pids + [postmaster], "pid", "0.1")
        dest = os.path.join(HERE, "profile-write.txt")
        with open(dest, "w") as f:
            f.write(f"# perf (cpu-clock, 999 Hz, all CPUs) during pgbench with bemi: {p['clients']} clients, "
                    f"{res['tps']:.0f} TPS\n# worker pid {worker}; server processes {', '.join(server_pids)}\n\n")
            f.write("## the server's processes (share of all samples on the machine)\n")
            f.write(by_pid)
            f.write("\n\n## the worker: self time by library and symbol\n")
            f.write(report([str(worker)], "dso,sym", "0.5"))
            f.write("\n\n## the worker: including callees\n")
            f.write(report([str(worker)], "sym", "2", children=True))
            f.write("\n\n## all server processes except the worker: self time by library and symbol\n")
            f.write(report([x for x in server_pids if x != str(worker)], "dso,sym", "0.4"))
        log(f"   profile written to {dest}")

    # -- report ---------------------------------------------------------------------------------
    # -- the trail in another database (issue 16) -------------------------------------------------
    def start_destination(self):
        """A second throwaway server, as a destination: no preload, wal_level = replica."""
        if getattr(self, "dest", None):
            return
        d = os.path.join(self.workdir, "dest")
        os.makedirs(d)
        if self.server.user:
            pw = pwd.getpwnam(self.server.user)
            os.chown(d, pw.pw_uid, pw.pw_gid)
        self.dest = Server(d, self.args.port + 1, self.server.user)
        self.dest.init({"wal_level": "replica", "shared_buffers": "'512MB'", "max_wal_size": "'16GB'", "min_wal_size": "'1GB'",
                        "checkpoint_timeout": "'30min'", "log_min_messages": "warning", "log_checkpoints": "off"})
        self.dest.start()
        self.dest.psql("CREATE DATABASE trail", db="postgres")
        self.dest.psql("SET client_min_messages = error; CREATE EXTENSION bemi;"
                       "CREATE ROLE bench_ingest LOGIN IN ROLE bemi_ingest", db="trail")

    def warm(self, server, db):
        """Makes a server look like one that has run for a while: every buffer of its shared memory
        used once (a fresh server takes a page fault for each buffer it uses the first time: 11% of
        the destination's profile in a drain) and WAL segments made ahead (a fresh one makes them
        as it goes). The same for both servers of section 9, before its rounds."""
        server.psql("CREATE EXTENSION IF NOT EXISTS pg_prewarm; DROP TABLE IF EXISTS bench_warm;"
                    "CREATE TABLE bench_warm AS SELECT repeat('x', 900) AS pad FROM generate_series(1, 600000);"
                    "SELECT pg_prewarm('bench_warm'); DROP TABLE bench_warm; DROP EXTENSION pg_prewarm; CHECKPOINT",
                    db=db)

    def set_destination(self, connections=2):
        srv = self.server
        srv.psql(f"ALTER SYSTEM SET bemi.destination_connections = {int(connections)}; SELECT pg_reload_conf()")
        srv.psql(f"SELECT bemi_set_destination('host={self.dest.sock} port={self.dest.port} dbname=trail "
                 "user=bench_ingest')")
        for _ in range(600):  # the worker starts again, connected there
            if srv.one("SELECT destination_reachable FROM bemi_status()") == "t":
                return self.worker_pid()
            time.sleep(0.1)
        raise RuntimeError("the worker did not reach the destination")

    def dest_changes(self):
        return int(self.dest.one("SELECT count(*) FROM bemi.changes", db="trail"))

    def dest_write_round(self, kind, secs, tag):
        """kind: a (nothing capturing), b (bemi, trail here), r (bemi, trail in the destination)."""
        p = self.p
        self.reset_pgbench("DEFAULT" if kind == "a" else "FULL")
        pid = None
        if kind != "a":
            pid = self.create_bemi()
            if kind == "r":
                pid = self.set_destination()
        self.server.psql("CHECKPOINT")
        cpu0 = proc_cpu_seconds(pid) if pid else None
        there0 = self.dest_changes()
        lsn0 = self.server.one("SELECT pg_current_wal_lsn()")
        res = self.pgbench("plain" if kind == "a" else "bemi", secs, p["clients"], p["threads"], tag)
        lsn1 = self.server.one("SELECT pg_current_wal_lsn()")
        cpu1 = proc_cpu_seconds(pid) if pid else None
        res["wal_bytes"] = int(float(self.server.one(f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')")))
        res["cpu"] = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
        res["drain_s"] = self.wait_bemi(lsn1) if pid else None
        if kind == "b":
            res["captured"] = int(self.server.one("SELECT count(*) FROM bemi.changes WHERE \"table\" LIKE 'pgbench%'"))
        elif kind == "r":
            res["captured"] = self.dest_changes() - there0
            res["local"] = int(self.server.one("SELECT count(*) FROM bemi.changes"))
        if pid:
            self.drop_bemi()
        return res

    def pin(self, server, cpus):
        """Moves a server's processes (and those it starts later) to the given cores."""
        with open(os.path.join(server.data, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        pids = [postmaster]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                            pids.append(int(entry))
                except (OSError, IndexError, ValueError):
                    pass
        for pid in pids:
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass  # gone meanwhile

    def dest_ingest_round(self, kind, n_ins, n_upd, n_del, chunk, split=False, connections=2):
        """A backlog built while the worker is stopped, then drained: here (b) or there (r, on
        `connections` connections). split: each server on a core of its own during the drain (the
        source on the first, the destination on the second), as two one-core machines would be."""
        srv = self.server
        self.create_backlog_procedure()
        pid = self.create_bemi()
        if kind == "r":
            pid = self.set_destination(connections)
            # Each drain starts on an empty trail, there as here (the local trail is made anew for
            # each round): otherwise the destination's indexes grow round after round.
            self.dest.psql("SET bemi.allow_trail_changes = on; TRUNCATE bemi.changes", db="trail")
        there0 = self.dest_changes()
        release = self.stop_worker(pid)
        lsn0 = srv.one("SELECT pg_current_wal_lsn()")
        srv.psql(f"CALL bench_backlog({n_ins}, {n_upd}, {n_del}, {chunk})")
        lsn1 = srv.one("SELECT pg_current_wal_lsn()")
        srv.psql("CHECKPOINT")
        if kind == "r":
            self.dest.psql("CHECKPOINT", db="trail")
        cpu0 = proc_cpu_seconds(pid)
        # With --profile: the destination's backend that the worker writes through, and the worker.
        perfs = []
        backends = []  # the destination's backends the worker writes through (made as it connects)
        if kind == "r":
            backends = [int(x) for x in self.dest.psql("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                                         "'bemi worker' ORDER BY pid", db="trail").split()]
        backend_cpu0 = {b: proc_cpu_seconds(b) for b in backends}
        if self.args.profile and kind == "r":
            if backends:
                perfs.append(self.start_perf(backends[0], "destination-backend"))
            perfs.append(self.start_perf(pid, "destination-worker"))
        # What the destination's backends and the worker wait for during the drain, sampled.
        waits, stop_sampling = {}, threading.Event()

        def sample():
            there = Session(self.dest, "trail")
            here = Session(srv, DB)
            while not stop_sampling.is_set():
                for where, sess, cond in (("dest", there, "application_name = 'bemi worker'"),
                                          ("worker", here, f"pid = {pid}")):
                    for line in sess.run("SELECT coalesce(wait_event_type || ':' || wait_event, state, '?') "
                                         f"FROM pg_stat_activity WHERE {cond};").split("\n"):
                        if line.strip():
                            key = f"{where} {line.strip()}"
                            waits[key] = waits.get(key, 0) + 1
                time.sleep(0.02)
            there.close()
            here.close()

        sampler = threading.Thread(target=sample) if kind == "r" else None
        if sampler:
            sampler.start()
        all_cpus = os.sched_getaffinity(0)
        if split:
            cores = sorted(all_cpus)
            self.pin(srv, {cores[0]})
            self.pin(self.dest, {cores[-1]})
        t0 = time.monotonic()
        release()
        srv.one(f"SELECT bemi_wait('{lsn1}', '60 min')")
        drain = time.monotonic() - t0
        if sampler:
            stop_sampling.set()
            sampler.join()
            log("   waits: " + ", ".join(f"{k} {v}" for k, v in sorted(waits.items(), key=lambda kv: -kv[1])))
        if split:
            self.pin(srv, all_cpus)
            self.pin(self.dest, all_cpus)
        for perf in perfs:
            if perf:
                self.stop_perf(perf)
        cpu1 = proc_cpu_seconds(pid)
        backend_now = [int(x) for x in self.dest.psql("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                                       "'bemi worker'", db="trail").split()] if kind == "r" else []
        # Connections made during the drain counted from zero.
        dest_cpu = sum((proc_cpu_seconds(b) or 0) - (backend_cpu0.get(b) or 0) for b in backend_now) \
            if kind == "r" else None
        got = (self.dest_changes() - there0) if kind == "r" else \
            int(srv.one("SELECT count(*) FROM bemi.changes WHERE \"table\" = 'bench_ingest'"))
        self.drop_bemi()
        srv.psql("DROP TABLE bench_ingest; DROP PROCEDURE bench_backlog")
        wal = int(float(srv.one(f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')")))
        return dict(got=got, drain_s=drain, cpu=(cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
                    wal=wal, dest_cpu=dest_cpu, connections=connections if kind == "r" else None)

    def section_destination(self):
        p = self.p
        self.start_destination()
        log("   warming both servers (shared memory used once, WAL segments made ahead)")
        self.warm(self.server, DB)
        self.warm(self.dest, "trail")
        rounds, secs = p["write_rounds"], p["write_secs"]
        kinds = {"a": "(a) nothing capturing", "b": "(b) bemi, the trail here",
                 "r": "(r) bemi, the trail in another server (`bemi_set_destination`)"}
        log(f"9. the trail in another database: write path {len(kinds)} configurations x {rounds} rounds x {secs} s; "
            "ingest here vs. there")
        results = {k: [] for k in kinds}
        for r in range(rounds):
            for k in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
                res = self.dest_write_round(k, secs, f"dest{r}{k}")
                results[k].append(res)
                log(f"   round {r + 1} {k}: {res['tps']:.0f} tps, wal {res['wal_bytes'] / max(res['n'], 1):.0f} B/txn"
                    + (f", worker cpu {res['cpu']:.1f} s" if res.get('cpu') is not None else "")
                    + (f", captured {res['captured']:,}" if res.get('captured') is not None else "")
                    + (f", drain {res['drain_s']:.2f} s" if res.get('drain_s') is not None else ""))
        rows = []
        for k, label in kinds.items():
            rs = results[k]
            rows.append([label, fmt(median([x["tps"] for x in rs])),
                         fmt(median([ratio(x["tps"], a["tps"]) for x, a in zip(rs, results["a"])]), 3),
                         fmt(median([x["wal_bytes"] / max(x["n"], 1) for x in rs])),
                         fmt(median([x["p99_ms"] for x in rs]), 2),
                         fmt(median([x["cpu"] / secs * 100 if x.get("cpu") is not None else None for x in rs]), 0, " %"),
                         fmt(median([x["drain_s"] for x in rs]), 2, " s") if k != "a" else "–"])
        remote_local = median([ratio(x["tps"], b["tps"]) for x, b in zip(results["r"], results["b"])])
        wal_saved = median([ratio(x["wal_bytes"] / max(x["n"], 1), b["wal_bytes"] / max(b["n"], 1))
                            for x, b in zip(results["r"], results["b"])])
        local_rows = [x.get("local") for x in results["r"]]
        n = p["backlog"] // 2
        n_ins, n_upd = n // 2, n * 7 // 20
        n_del = n - n_ins - n_upd
        log(f"   ingest: a backlog of {n:,} changes, drained here and there")
        # shared: both servers on all cores; split: one core each, as two machines would be.
        # The remote trail on 1, 2 (the default) and 4 connections.
        ing = {(k, c, split): self.dest_ingest_round(k, n_ins, n_upd, n_del, 1000, split, c)
               for split in (False, True) for k, c in (("b", 0), ("r", 1), ("r", 2), ("r", 4))}
        for (k, c, split), x in ing.items():
            x["rate"] = x["got"] / x["drain_s"]
            log(f"   ingest {k}{c or ''}{' split' if split else ''}: {x['got']:,} changes in {x['drain_s']:.1f} s = "
                f"{x['rate']:,.0f}/s, worker cpu {x['cpu']:.1f} s"
                + (f", destination backends cpu {x['dest_cpu']:.1f} s" if x.get("dest_cpu") is not None else ""))
        ing_ratio = ratio(ing[("r", 2, True)]["rate"], ing[("b", 0, True)]["rate"])
        shared_ratio = ratio(ing[("r", 2, False)]["rate"], ing[("b", 0, False)]["rate"])
        scaling = {c: ratio(ing[("r", c, False)]["rate"], ing[("r", 1, False)]["rate"]) for c in (2, 4)}
        text = ["## 9. The trail in another database (issue 16)\n",
                f"A second throwaway server on the same machine (no preload, `wal_level = replica`) holds the "
                f"trail for (r), reached over a unix socket as a role granted `bemi_ingest`. pgbench tpcb-like, "
                f"scale {p['scale']}, {p['clients']} clients, {secs} s per run, {rounds} rounds interleaved; "
                "medians. *WAL/txn* is the source's WAL per transaction (for (b) it includes the trail's own "
                "rows and indexes; for (r) those are written on the destination). *worker CPU* is the source "
                "worker's. The destination server shares the 2 cores, so (r) is not cheaper in CPU here, only "
                "in the source's WAL and disk.\n",
                md_table(["configuration", "TPS", "× (a)", "WAL/txn B", "p99 ms", "worker CPU", "catch-up"], rows), "",
                f"(r) vs (b): TPS {fmt(remote_local, 3)}×, source WAL per transaction {fmt(wal_saved, 2)}×; "
                f"rows left in the source's own trail during (r): {local_rows}.\n",
                f"Ingest: a backlog of {n:,} changes ({n_ins:,} inserts, {n_upd:,} updates, {n_del:,} deletes, "
                "1000 per transaction) built while the worker is stopped, then drained. *shared*: both servers "
                "on both cores, competing for them; *split*: during the drain the source's processes run on "
                "one core and the destination's on the other, as a source and a destination on two one-core "
                "machines would (the local trail then has the one core of its machine).\n",
                md_table(["trail", "connections", "cores", "changes", "drain s", "changes/s", "worker CPU s",
                          "destination CPU s"],
                         [[kinds[k], str(c) if k == "r" else "–", "split" if split else "shared", f"{x['got']:,}",
                           fmt(x["drain_s"], 1), fmt(x["rate"]), fmt(x["cpu"], 1),
                           fmt(x["dest_cpu"], 1) if k == "r" else "–"]
                          for (k, c, split), x in ing.items()]), "",
                f"Remote ingest rate, on the default 2 connections: {fmt(ing_ratio, 2)}× the local trail's with a "
                f"core each (split), {fmt(shared_ratio, 2)}× with both servers on the same cores (shared). "
                f"With both servers on the same cores, 2 connections drain {fmt(scaling[2], 2)}× as fast as 1, "
                f"and 4 connections {fmt(scaling[4], 2)}×. *destination CPU* is that of all the destination's "
                "backends the worker writes through.\n"]
        self.summary.append(("destination: remote ingest ≥ the local trail's rate (a core per server)",
                             ing_ratio is not None and ing_ratio >= 1,
                             f"{fmt(ing_ratio, 2)} × local (both on 2 shared cores: {fmt(shared_ratio, 2)} ×)"))
        self.summary.append(("destination: source WAL per transaction, remote vs local", wal_saved is not None and wal_saved < 1,
                             f"{fmt(wal_saved, 2)} × local"))
        self.sections.append("\n".join(text))

    def machine(self):
        def sh(cmd):
            try:
                return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
            except Exception:
                return ""
        cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip() or platform.processor()
        mem = sh("awk '/MemTotal/ {printf \"%.0f GB\", $2/1048576}' /proc/meminfo")
        pg = self.server.one("SHOW server_version", db="postgres") if self.server.running else ""
        commit = sh(f"git -C {ROOT} rev-parse --short HEAD")
        dirty = sh(f"git -C {ROOT} status --porcelain -- src include ext Makefile")
        return [f"- machine: {os.cpu_count()} CPUs ({cpu}), {mem} RAM, {platform.system()} {platform.release()}, "
                f"{sh('. /etc/os-release && echo $PRETTY_NAME')}",
                f"- PostgreSQL {pg}; bemi at commit {commit}" + (" with uncommitted changes in the source tree" if dirty else ""),
                "- server: shared_buffers 512MB, max_wal_size 16GB, checkpoint_timeout 30min, fsync and "
                "synchronous_commit on (defaults), bemi.batch_size default; client and server on the same machine "
                "(unix socket)"]

    def report(self, started, sections_run):
        took = time.monotonic() - started
        lines = [f"# bemi benchmark results ({self.mode} mode)\n",
                 f"Run on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with "
                 f"`bench/run{' --quick' if self.mode == 'quick' else ''}` in {took / 60:.1f} minutes.\n"]
        lines += self.machine()
        lines.append("")
        if self.summary:
            lines.append("## Goals\n")
            lines.append(md_table(["goal", "result", "measured"],
                                  [[g, "met" if ok else "**MISSED**", m] for g, ok, m in self.summary]))
            lines.append("")
        if self.notes:
            lines += ["**Notes:** " + "; ".join(self.notes), ""]
        lines += self.sections
        lines.append("See bench/README.md for what each number means and how it is measured.\n")
        return "\n".join(lines)

    def run(self):
        started = time.monotonic()
        only = set(self.args.only.split(",")) if self.args.only else {"write", "wal", "decomp", "lag", "ingest",
                                                                       "memory", "reads", "rules", "dest", "verify"}
        try:
            self.setup()
            if "write" in only:
                self.section_write_path()
                self.section_comment_context()
            if "wal" in only:
                self.section_wal()
            if "decomp" in only:
                self.section_decomposition()
                self.section_load_decomposition()
            if "ingest" in only:
                self.section_ingest()
            if "lag" in only:
                if not hasattr(self, "b_max_tps"):
                    self.b_max_tps = self.args.lag_tps or 500
                self.section_lag()
            if "memory" in only:
                self.section_memory()
            if "reads" in only:
                self.section_reads()
            if "rules" in only:
                self.section_rules()
            if "dest" in only:
                self.section_destination()
            if "verify" in only:
                self.section_verify()
            if self.args.profile:
                self.profile_write_path()
            text = self.report(started, only)
        finally:
            self.teardown()
        print(text)
        out = self.args.output or os.path.join(HERE, "results.md" if not self.args.only else "results-partial.md")
        with open(out, "w") as f:
            f.write(text)
        log(f"written to {out}")


def main():
    ap = argparse.ArgumentParser(description="bemi benchmark suite (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="smaller and shorter: under 5 minutes")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated sections: write,wal,decomp,ingest,lag,memory,reads,rules,dest,verify")
    ap.add_argument("--profile", action="store_true",
                    help="also record perf profiles (worker during ingest; whole machine during pgbench) into "
                         "bench/profile-*.txt; the ingest rate is then perturbed")
    ap.add_argument("--scale", type=int, help="pgbench scale (default 10)")
    ap.add_argument("--lag-tps", type=int, help="with --only lag: the maximum TPS to take 80%% of")
    ap.add_argument("--port", type=int, default=int(os.environ.get("BEMI_BENCH_PORT", "54331")))
    ap.add_argument("--output", help="where to write the Markdown (default bench/results.md)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    Bench(ap.parse_args()).run()


if __name__ == "__main__":
    main()
