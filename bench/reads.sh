#!/bin/sh
# Read side of the trail: row history, time travel, transaction and context history, timed on a
# synthetic trail built straight into bemi.changes with generate_series in a throwaway server.
#   bench/reads.sh                 # 1M changes (about a minute)
#   BEMI_BENCH_CHANGES=10000000 bench/reads.sh   # 10M changes (several minutes on 2 cores)
# It starts its own server even under bench/run (section 5), so the trail it times holds exactly
# the synthetic changes.
# Needs the extension installed (make install). As root, the server runs as bemi_ci
# (BEMI_BENCH_USER to choose another unprivileged user).
# 10% of the changes are UPDATEs of the real table bench_todo (100,000 rows, so 1 change per row
# per 1M changes), the rest are spread over nine other table names.
set -eu
# Under bench/run: smoke 100k, quick 1M, full 10M changes.
case "${BEMI_BENCH_MODE:-}" in smoke) DEFAULT=100000 ;; full) DEFAULT=10000000 ;; *) DEFAULT=1000000 ;; esac
CHANGES=${BEMI_BENCH_CHANGES:-$DEFAULT}
ROWS=100000
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(pg_config --bindir)
USER_NAME=${BEMI_BENCH_USER:-bemi_ci}
RUN_AS=""
[ "$(id -u)" = 0 ] && RUN_AS="su $USER_NAME -s /bin/sh -c"
DIR=$(mktemp -d /var/tmp/bemi-bench.XXXX)
chmod 755 "$DIR"
[ -n "$RUN_AS" ] && chown "$USER_NAME" "$DIR"
PORT=$((20000 + $$ % 10000))
as() { if [ -n "$RUN_AS" ]; then $RUN_AS "$*"; else sh -c "$*"; fi; }
cleanup() { as "$BIN/pg_ctl -D $DIR/data -m immediate stop" >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT
[ -n "${BEMI_BENCH_KEEP:-}" ] && trap - EXIT
as "$BIN/initdb -D $DIR/data -U postgres >/dev/null"
cat "$HERE/test/regress.conf" >> "$DIR/data/postgresql.conf"
cat >> "$DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_buffers = '1GB'
max_wal_size = '8GB'
maintenance_work_mem = '512MB'
CONF
as "$BIN/pg_ctl -D $DIR/data -l $DIR/log -w start" >/dev/null
PSQL="psql -X -q -v ON_ERROR_STOP=1 -h $DIR -p $PORT -U postgres -d postgres"

echo "building a trail of $CHANGES changes ..." >&2
start=$(date +%s)
$PSQL <<SQL
CREATE TABLE bench_todo (id int PRIMARY KEY, task text NOT NULL, done boolean NOT NULL);
INSERT INTO bench_todo SELECT g, 'task ' || g, false FROM generate_series(1, $ROWS) g;
CREATE EXTENSION bemi;
SELECT bemi_wait();
-- The synthetic changes fall between the start of tracking and now, in id order. Made-up
-- changes: the session says it means it (each statement is recorded in bemi.gaps).
SET bemi.allow_trail_changes = on;
DO \$\$
DECLARE
    lo bigint := 1;
    n bigint := $CHANGES;
    t0 timestamptz := bemi_tracking_started_at();
    span interval := clock_timestamp() - bemi_tracking_started_at();
BEGIN
    WHILE lo <= n LOOP
        INSERT INTO bemi.changes (primary_key, "before", "after", context, database, schema, "table",
                                  operation, committed_at, transaction_id, position)
        SELECT k::text,
               jsonb_build_object('id', k, 'task', 'task ' || k, 'done', false),
               jsonb_build_object('id', k, 'task', 'task ' || k, 'done', g % 2 = 0),
               jsonb_build_object('user_id', g % 5000, 'request_id', 'r' || g / 4,
                                  '_bemi', jsonb_build_object('role', 'app', 'application_name', 'bench')),
               'postgres', 'public', CASE WHEN g % 10 = 0 THEN 'bench_todo' ELSE 't_' || g % 10 END,
               'UPDATE', t0 + span * (g::float8 / n), g / 4, ('0/' || to_hex(g * 100))::pg_lsn
          FROM generate_series(lo, least(lo + 999999, n)) g, LATERAL (SELECT (g / 10) % $ROWS + 1 AS k) key;
        COMMIT;
        lo := lo + 1000000;
    END LOOP;
END \$\$;
VACUUM ANALYZE bemi.changes;
-- bemi.contexts from 0.5.0 on (bench/compare may time an older commit).
SELECT to_regclass('bemi.contexts') IS NOT NULL AS has_contexts \gset
\if :has_contexts
VACUUM ANALYZE bemi.contexts;
\endif
-- The worker decodes (and skips) the load's WAL too: let it catch up before timing anything.
SELECT bemi_wait(timeout => '1 hour');
SQL
echo "built in $(( $(date +%s) - start )) s; $($PSQL -Atc "SELECT pg_size_pretty(sum(bytes)) FROM bemi_partitions()") on disk" >&2

$PSQL <<'SQL'
SET TimeZone = 'UTC';
SELECT bemi_tracking_started_at() AS t0, max(committed_at) AS t1 FROM bemi.changes \gset
CREATE TEMP TABLE timings (what text, calls int, ms_per_call numeric, rows_per_call numeric);
-- Runs a query `calls` times with $1 = a random number in 1..100000, records the mean time.
CREATE FUNCTION pg_temp.timeit(what text, query text, calls int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
    total interval := '0';
    n bigint;
    total_rows bigint := 0;
BEGIN
    EXECUTE query INTO n USING 1;  -- warm the plan and the cache path
    FOR i IN 1..calls LOOP
        t := clock_timestamp();
        EXECUTE query INTO n USING (1 + floor(random() * 100000))::int;
        total := total + (clock_timestamp() - t);
        total_rows := total_rows + n;
    END LOOP;
    INSERT INTO timings VALUES (what, calls, round((extract(epoch FROM total) * 1000 / calls)::numeric, 3),
                                round(total_rows::numeric / calls, 1));
END $$;
\o /dev/null
SELECT pg_temp.timeit('row history: bemi.changes index scan (baseline)',
    'SELECT count(c.*) FROM bemi.changes c WHERE "table" = ''bench_todo'' AND primary_key = $1::text AND schema = ''public''', 500);
SELECT pg_temp.timeit('row history: bemi_row_history(tbl, key)',
    'SELECT count(h.diff) FROM bemi_row_history(''bench_todo'', $1) h', 500);
SELECT pg_temp.timeit('row as of the middle of the trail: bemi_row_as_of',
    format('SELECT count(*) FROM (SELECT bemi_row_as_of(NULL::bench_todo, $1, %L)) r',
           :'t0'::timestamptz + (:'t1'::timestamptz - :'t0'::timestamptz) / 2), 200);
SELECT pg_temp.timeit('transaction history: bemi_transaction_history',
    'SELECT count(h.diff) FROM bemi_transaction_history($1 * 7) h', 200);
SELECT pg_temp.timeit('context history: bemi_context_history(request_id)',
    'SELECT count(h.diff) FROM bemi_context_history(jsonb_build_object(''request_id'', ''r'' || $1 * 7)) h', 200);
SELECT pg_temp.timeit('table as of the last 1% of the trail: bemi_as_of',
    format('SELECT count(*) + 0 * $1 FROM bemi_as_of(NULL::bench_todo, %L)',
           :'t1'::timestamptz - (:'t1'::timestamptz - :'t0'::timestamptz) / 100), 5);
SELECT pg_temp.timeit('table as of the middle of the trail: bemi_as_of',
    format('SELECT count(*) + 0 * $1 FROM bemi_as_of(NULL::bench_todo, %L)',
           :'t0'::timestamptz + (:'t1'::timestamptz - :'t0'::timestamptz) / 2), 2);
SELECT pg_temp.timeit('whole table now (baseline): SELECT * FROM bench_todo',
    'SELECT count(*) + 0 * $1 FROM (SELECT * FROM bench_todo) t', 5);
\o
\pset footer off
SELECT what, calls, ms_per_call, rows_per_call FROM timings;
SQL
