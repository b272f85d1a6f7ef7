#!/bin/sh
# What a destination pays per change to land a batch, by the way the rows reach it (issue 16: the
# destination's CPU limits remote ingest). One backend, no network, in a throwaway server; a table
# shaped like bemi.changes with bemi.changes' own indexes (read from the installed extension).
#   copy (jsonb as text)      COPY ... FROM (FORMAT binary), jsonb in its send format (text):
#                             what the worker does today; the destination parses every document.
#   insert ... select (built) INSERT ... SELECT of the same rows with their jsonb already built: the
#                             ceiling of a binary ingest through the executor (no parsing, no
#                             validation, rows one by one).
#   copy into a temp stage    COPY of the same rows into a temporary table, jsonb as bytea: what a
#                             binary ingest through a staging table would add to the line above.
#   bench/destination-paths.sh                         # 200,000 changes, 3 rounds
#   BEMI_BENCH_CHANGES=50000 bench/destination-paths.sh
# Needs the extension installed (make install). As root, the server runs as bemi_ci
# (BEMI_BENCH_USER to choose another unprivileged user). Prints a Markdown table.
set -eu
CHANGES=${BEMI_BENCH_CHANGES:-200000}
ROUNDS=${BEMI_BENCH_ROUNDS:-3}
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
as "$BIN/initdb -D $DIR/data -U postgres >/dev/null"
# A destination: no preload, no logical WAL.
cat >> "$DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
shared_buffers = '512MB'
temp_buffers = '256MB'
max_wal_size = '16GB'
CONF
as "$BIN/pg_ctl -D $DIR/data -l $DIR/log -w start" >/dev/null
PSQL="psql -X -q -v ON_ERROR_STOP=1 -h $DIR -p $PORT -U postgres -d postgres"

# Rows like a pgbench_accounts UPDATE's: four-column images, a context of a request.
$PSQL -c "CREATE EXTENSION bemi" 2>/dev/null
$PSQL <<SQL
CREATE TABLE t (LIKE bemi.changes INCLUDING DEFAULTS);
ALTER TABLE t ADD PRIMARY KEY (id);
DO \$\$
DECLARE
    def text;
BEGIN
    FOR def IN SELECT indexdef FROM pg_indexes
                WHERE schemaname = 'bemi' AND tablename = 'changes_default' AND indexname <> 'changes_default_pkey' LOOP
        EXECUTE regexp_replace(def, '^CREATE (UNIQUE )?INDEX \S+ ON bemi\.changes_default ', 'CREATE \1INDEX ON public.t ');
    END LOOP;
END \$\$;
CREATE UNLOGGED TABLE src AS SELECT * FROM t WITH NO DATA;
INSERT INTO src (id, primary_key, before, after, context, database, schema, "table", operation, committed_at,
                 transaction_id, position, source_system_id, created_at)
SELECT i, i::text,
       jsonb_build_object('aid', i, 'bid', i % 10, 'abalance', i * 3, 'filler', repeat(' ', 84)),
       jsonb_build_object('aid', i, 'bid', i % 10, 'abalance', i * 3 + 7, 'filler', repeat(' ', 84)),
       jsonb_build_object('user_id', i % 1000, 'endpoint', '/accounts', 'method', 'PATCH',
                          '_bemi', jsonb_build_object('role', 'app', 'application_name', 'pgbench')),
       'postgres', 'public', 'pgbench_accounts', 'UPDATE', now(), i / 4, ('0/' || to_hex(i * 100))::pg_lsn,
       '7412345678901234567', now()
  FROM generate_series(1, $CHANGES) i;
COPY src TO '$DIR/text.bin' (FORMAT binary);
CREATE UNLOGGED TABLE stage_src AS
SELECT id, primary_key, jsonb_send(before) AS before, jsonb_send(after) AS after, jsonb_send(context) AS context,
       database, schema, "table", operation, committed_at, transaction_id, position, source_system_id, created_at
  FROM src;
COPY stage_src TO '$DIR/stage.bin' (FORMAT binary);
SQL

now() { date +%s.%N; }
per_row() { echo "($2 - $1) * 1000000 / $CHANGES" | bc -l | xargs printf "%.2f"; }
results=""
for r in $(seq 1 "$ROUNDS"); do
	for way in copy insert stage; do
		$PSQL -c "TRUNCATE t" -c "CHECKPOINT"
		case $way in
		copy) sql="COPY t FROM '$DIR/text.bin' (FORMAT binary)" ;;
		insert) sql="INSERT INTO t SELECT * FROM src" ;;
		stage) sql="CREATE TEMP TABLE st (LIKE stage_src); COPY st FROM '$DIR/stage.bin' (FORMAT binary)" ;;
		esac
		s=$(now)
		$PSQL -c "$sql"
		e=$(now)
		us=$(per_row "$s" "$e")
		echo "round $r $way: $us us/change" >&2
		results="$results$way $us
"
	done
done

median() { printf '%s' "$results" | awk -v w="$1" '$1 == w { print $2 }' | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] }'; }
copy=$(median copy)
insert=$(median insert)
stage=$(median stage)
echo "| way rows reach the destination ($CHANGES changes, median of $ROUNDS) | µs per change | × copy |"
echo "| --- | --- | --- |"
echo "| copy, jsonb as text (today) | $copy | 1.00 |"
ratio() { echo "$1 / $copy" | bc -l | xargs printf "%.2f"; }
echo "| insert ... select, jsonb built (binary ingest's ceiling) | $insert | $(ratio "$insert") |"
echo "| copy into a temp stage, jsonb as bytea (a staging table's extra) | $stage | $(ratio "$stage") |"
