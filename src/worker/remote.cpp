// remote.cpp: writing the worker's batches into another PostgreSQL's bemi.changes (issue 16).
//
// Runs in the worker, which calls it instead of its local insert when bemi.destination names a
// connection string (batch.cpp). Per batch, one transaction on the destination, on the next of
// bemi.destination_connections connections (round robin):
//   1. BEGIN, the source's new gaps, and the rows' ids, drawn from the destination's sequence by
//      the batch in one statement after the batch before it drew its own (the worker has that
//      answer before it sends the next batch): ids follow change order across batches, as in a
//      local trail;
//   2. the rows: SELECT bemi._ingest($1), the batch in one bytea with each jsonb in PostgreSQL's
//      own format, checked there and written by the table-level batch insert (src/fn/ingest_shim.c),
//      so the destination parses no JSON; where a connection finds that function unusable, or the
//      batch is larger than what may be queued for a connection (8 MB), by COPY bemi.changes
//      (...) FROM STDIN in binary format, jsonb as text, streamed;
//   3. once that statement is done and the batch before holds the source's row of bemi.source_progress
//      (its fence has answered: the row stays locked until it ends), that row moved from what
//      the batch before left to this batch's progress, fenced (INSERT ... ON CONFLICT DO UPDATE
//      ... WHERE it is still that, or a division by zero rolls the batch back), and COMMIT with
//      synchronous_commit = on, in one query string. The fence waits on the row lock of the
//      batch before, so batches commit in order, the destination's progress is always a prefix
//      of what it holds, and a worker that finds the row moved by another (a copy of this
//      server) fails instead of writing twice. The order is kept by the worker and a row lock
//      only bemi_ingest can take, not by locks any role could take and hold.
// Batches overlap: while one connection's backend parses and inserts a batch, the next batch goes
// to the next connection, and the worker decodes the one after; Advance() moves the fences along
// whenever the worker pumps or waits. Only once SettleOldest() has read a COMMIT's answer (the
// rows are durable there) does the worker update its local bemi.progress and confirm its slot
// (batch.cpp, worker.cpp), so a crash anywhere resumes from what the destination holds
// (LoadProgress, at start), and nothing is lost or written twice across the two servers. A failure
// on any connection drops them all: batches in flight roll back there (a batch after a rolled-back
// one fails its fence), or committed, which the next run reads from the progress.
//
// Waiting: the connections are non-blocking, and every wait for the destination (connecting,
// sending, a result) is a wait on its socket and the worker's latch that serves interrupts. A
// destination stuck on a lock or a dead network never keeps the worker from a shutdown, DROP
// DATABASE or a new destination.
//
// Crossings: libpq never longjmps, so its calls are plain C++ here. The COPY data (binary format:
// times, ids and positions as integers, jsonb as its send format) is built from the batch's arena
// a few hundred rows at a time, each chunk inside one PgCall (jsonb output may raise), and sent
// while the destination reads and inserts the chunks before it.
#include "remote.hpp"

#include "transaction.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

extern "C" {
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "libpq/pqformat.h"
#include "port/pg_bswap.h"
#include "storage/latch.h"
#include "utils/wait_event.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
}

namespace bemi {

namespace {

constexpr long kConnectTimeoutMs = 10 * 1000;
// How often a wait on one connection pushes on what the others still hold to send: a unix
// socket's buffer holds a few hundred changes, some 10 ms of the destination's work.
constexpr long kPumpMs = 2;
// A drop or update of the extension asked the worker to hold still (src/shared/lifecycle.c): a
// destination that has not answered within this long is let go of (as for DROP DATABASE below)
// rather than making the statement wait out its 10 s; waits meanwhile wake this often to check.
constexpr long kHoldPatienceMs = 1000;
constexpr long kHoldCheckMs = 100;
// What a batch may queue in libpq per connection, beyond what the socket holds.
constexpr size_t kQueuedBytes = 8 * 1024 * 1024;

// ids are sent: the batch draws them in order (Send). created_at is sent (the time the worker made
// the rows): with its volatile default (clock_timestamp()) left to the destination, COPY would
// insert row by row instead of in multi-insert batches. COPY writes an identity column's values as
// given (GENERATED ALWAYS included).
const char *const kCopy =
    "COPY bemi.changes (id, primary_key, \"before\", \"after\", context, database, schema, \"table\", operation,"
    " committed_at, transaction_id, position, source_system_id, created_at) FROM STDIN (FORMAT binary)";

// The same rows with their jsonb in PostgreSQL's own format, checked and written there by
// bemi._ingest (src/fn/ingest_shim.c): the destination parses no JSON text (a quarter of its time
// on a COPY: bench/destination-paths.sh), and writes by the table-level batch insert. Used on a
// connection whose destination has the function, lets the role run it and has this database's
// encoding (nothing is converted on the way). The ids are the worker's, drawn as for COPY. A
// statement prepared once per connection, its plan generic: the batch is not copied into a plan.
const char *const kIngestStatement = "bemi_ingest";
const char *const kIngest = "SELECT bemi._ingest($1)";
const char *const kIngestUsable =
    "SELECT coalesce(has_function_privilege(to_regprocedure('bemi._ingest(bytea)')::oid, 'EXECUTE'), false)"
    " AND current_setting('server_encoding') = current_setting('client_encoding')";

// Fenced: the row moves only from what the batch before left ({5}..{7}; NULL: no row), else the
// division by zero rolls the batch back (kMovedUnder) and COMMIT, in the same query string, is
// not run. The worker's session has search_path =
// pg_catalog, pg_temp.
const char *const kProgress =
    "WITH moved AS (INSERT INTO bemi.source_progress AS p (source_system_id, database, txn_end_lsn, txn_records,"
    " txn_complete, gaps_forwarded) VALUES ({0}, {1}, '{2}'::pg_lsn, {3}::bigint, {4}::boolean, {8}::bigint)"
    " ON CONFLICT (source_system_id, database) DO UPDATE SET txn_end_lsn = excluded.txn_end_lsn,"
    " txn_records = excluded.txn_records, txn_complete = excluded.txn_complete,"
    " gaps_forwarded = excluded.gaps_forwarded, updated_at = now()"
    " WHERE p.txn_end_lsn = {5}::pg_lsn AND p.txn_records = {6}::bigint AND p.txn_complete = {7}::boolean"
    " RETURNING 1) SELECT 1 / count(*) FROM moved; COMMIT";
const char *const kMovedUnder = "22012"; // division_by_zero: the fence found the row moved

std::string LsnText(XLogRecPtr lsn) {
	return fmt::format("{:X}/{:X}", static_cast<uint32>(lsn >> 32), static_cast<uint32>(lsn));
}

// COPY's binary format (the COPY statement's column order): a field is its length and its
// bytes in the type's send format, -1 for NULL; integers in network order (libpq/pqformat.h).
// Times, ids and positions go as 8-byte integers: the destination parses none of them.
// C-style (StringInfo).
constexpr int16 kCopyColumns = 14;
const char kCopySignature[] = "PGCOPY\n\377\r\n\0";

void AppendInt64Field(StringInfo out, uint64 v) {
	pq_sendint32(out, sizeof(v));
	pq_sendint64(out, v);
}

void AppendBytesField(StringInfo out, const char *data, size_t len) {
	pq_sendint32(out, static_cast<uint32>(len));
	pq_sendbytes(out, data, static_cast<int>(len));
}

void AppendTextField(StringInfo out, const char *varlena) {
	AppendBytesField(out, VARDATA_ANY(varlena), VARSIZE_ANY_EXHDR(varlena));
}

// JSON text for the destination's jsonb_in, written here rather than by JsonbToCString: no
// spaces (fewer bytes for the destination to read), and strings copied a run at a time between
// the characters JSON escapes (escape_json appends byte by byte: 11% of the worker's CPU with a
// remote trail, bench/profile-destination-worker.txt). The escapes are escape_json's.
void AppendJsonString(StringInfo out, const char *s, int len) {
	enlargeStringInfo(out, len + 2);
	appendStringInfoCharMacro(out, '"');
	const char *run = s;
	const char *end = s + len;
	for (const char *p = s; p < end; p++) {
		unsigned char c = static_cast<unsigned char>(*p);
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		appendBinaryStringInfo(out, run, static_cast<int>(p - run));
		run = p + 1;
		switch (c) {
		case '\b':
			appendBinaryStringInfo(out, "\\b", 2);
			break;
		case '\f':
			appendBinaryStringInfo(out, "\\f", 2);
			break;
		case '\n':
			appendBinaryStringInfo(out, "\\n", 2);
			break;
		case '\r':
			appendBinaryStringInfo(out, "\\r", 2);
			break;
		case '\t':
			appendBinaryStringInfo(out, "\\t", 2);
			break;
		case '"':
			appendBinaryStringInfo(out, "\\\"", 2);
			break;
		case '\\':
			appendBinaryStringInfo(out, "\\\\", 2);
			break;
		default:
			appendStringInfo(out, "\\u%04x", c);
			break;
		}
	}
	appendBinaryStringInfo(out, run, static_cast<int>(end - run));
	appendStringInfoCharMacro(out, '"');
}

void AppendJsonScalar(StringInfo out, const JsonbValue &v) {
	switch (v.type) {
	case jbvNull:
		appendBinaryStringInfo(out, "null", 4);
		break;
	case jbvBool:
		if (v.val.boolean)
			appendBinaryStringInfo(out, "true", 4);
		else
			appendBinaryStringInfo(out, "false", 5);
		break;
	case jbvString:
		AppendJsonString(out, v.val.string.val, v.val.string.len);
		break;
	case jbvNumeric: {
		char *text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v.val.numeric)));
		appendStringInfoString(out, text);
		pfree(text);
		break;
	}
	default:
		elog(ERROR, "bemi: unexpected jsonb value type %d", int(v.type));
	}
}

void AppendJsonText(StringInfo out, const Jsonb *jb) {
	JsonbIterator *it = JsonbIteratorInit(const_cast<JsonbContainer *>(&jb->root));
	JsonbValue v;
	JsonbIteratorToken token;
	bool first = true; // nothing yet in the container being written: no comma before the next
	bool raw_scalar = false; // a scalar document comes as a one-element array, written bare
	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE) {
		switch (token) {
		case WJB_BEGIN_ARRAY:
			if (v.val.array.rawScalar) {
				raw_scalar = true;
				break;
			}
			[[fallthrough]];
		case WJB_BEGIN_OBJECT:
			if (!first)
				appendStringInfoCharMacro(out, ',');
			appendStringInfoCharMacro(out, token == WJB_BEGIN_OBJECT ? '{' : '[');
			first = true;
			break;
		case WJB_KEY:
			if (!first)
				appendStringInfoCharMacro(out, ',');
			AppendJsonString(out, v.val.string.val, v.val.string.len);
			appendStringInfoCharMacro(out, ':');
			first = true; // the value follows the colon
			break;
		case WJB_VALUE:
		case WJB_ELEM:
			if (!first)
				appendStringInfoCharMacro(out, ',');
			AppendJsonScalar(out, v);
			first = false;
			break;
		case WJB_END_ARRAY:
			if (!raw_scalar)
				appendStringInfoCharMacro(out, ']');
			first = false;
			break;
		case WJB_END_OBJECT:
			appendStringInfoCharMacro(out, '}');
			first = false;
			break;
		default:
			elog(ERROR, "bemi: unexpected jsonb iterator token %d", int(token));
		}
	}
}

// The document in PostgreSQL's own format (its varlena's data), for bemi._ingest.
void AppendJsonbInternalField(StringInfo out, const char *varlena) {
	AppendBytesField(out, VARDATA_ANY(varlena), VARSIZE_ANY_EXHDR(varlena));
}

// jsonb's send format: a version byte (1), then the document as text.
void AppendJsonbField(StringInfo out, const char *varlena) {
	int at = out->len;
	pq_sendint32(out, 0); // the length, filled in below
	pq_sendbyte(out, 1);
	int start = out->len;
	AppendJsonText(out, reinterpret_cast<const Jsonb *>(varlena));
	uint32 n = pg_hton32(static_cast<uint32>(out->len - start + 1));
	memcpy(out->data + at, &n, sizeof(n));
}

} // namespace

std::string ConninfoProblem(const char *conninfo) {
	char *error = nullptr;
	PQconninfoOption *options = PQconninfoParse(conninfo, &error);
	if (options == nullptr) {
		std::string problem = "it is not a valid connection string";
		// libpq's message may quote a piece of the string: left out when it could hold a password.
		if (error != nullptr && strcasestr(conninfo, "pass") == nullptr && strchr(conninfo, '@') == nullptr)
			problem += fmt::format(" ({})", std::string(error, strcspn(error, "\n")));
		PQfreemem(error);
		return problem;
	}
	std::string problem;
	for (PQconninfoOption *o = options; o->keyword != nullptr; o++) {
		if (strcmp(o->keyword, "password") == 0 && o->val != nullptr)
			problem = "it contains a password";
		// libpq expands a dbname that is a connection string itself: it could hide a password.
		else if (strcmp(o->keyword, "dbname") == 0 && o->val != nullptr &&
		         (strchr(o->val, '=') != nullptr || strstr(o->val, "://") != nullptr) && problem.empty())
			problem = "its dbname is a connection string of its own (give each part as a keyword)";
	}
	PQconninfoFree(options);
	return problem;
}

std::vector<Gap> LoadGaps(int64 after, int limit) {
	constexpr int kFields = 8;
	struct Found {
		char **values; // kFields per row, NULL for SQL NULL
		int rows;
	};
	Found found = PgCall([&]() {
		Found f{nullptr, 0};
		MemoryContext caller = CurrentMemoryContext;
		InTransactionWithSpi([&]() {
			Oid types[2] = {INT8OID, INT4OID};
			Datum args[2] = {Int64GetDatum(after), Int32GetDatum(limit)};
			// Times in the worker's ISO/UTC style; the destination reads them back exactly.
			if (SPI_execute_with_args("SELECT id, detected_at, from_lsn, to_lsn, reason, relation, role, statement"
			                          " FROM bemi.gaps WHERE id > $1 AND source_system_id IS NULL ORDER BY id LIMIT $2",
			                          2, types, args, nullptr, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "bemi: could not read bemi.gaps");
			f.rows = static_cast<int>(SPI_processed);
			f.values = static_cast<char **>(MemoryContextAllocZero(caller, sizeof(char *) * kFields * Max(f.rows, 1)));
			for (int r = 0; r < f.rows; r++)
				for (int c = 0; c < kFields; c++) {
					char *v = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, c + 1);
					f.values[r * kFields + c] = v != nullptr ? MemoryContextStrdup(caller, v) : nullptr;
				}
		});
		return f;
	});
	std::vector<Gap> gaps;
	auto text = [&](int r, int c) -> std::optional<std::string> {
		const char *v = found.values[r * kFields + c];
		return v != nullptr ? std::optional<std::string>(v) : std::nullopt;
	};
	for (int r = 0; r < found.rows; r++) {
		Gap gap;
		gap.id = std::stoll(*text(r, 0));
		gap.detected_at = *text(r, 1);
		gap.from_lsn = text(r, 2);
		gap.to_lsn = *text(r, 3);
		gap.reason = *text(r, 4);
		gap.relation = text(r, 5);
		gap.role = text(r, 6);
		gap.statement = text(r, 7);
		gaps.push_back(std::move(gap));
	}
	PgCall([&]() {
		for (int i = 0; i < found.rows * kFields; i++)
			if (found.values[i] != nullptr)
				pfree(found.values[i]);
		pfree(found.values);
	});
	return gaps;
}

std::string SystemIdentifier() {
	return std::to_string(PgCall([]() { return GetSystemIdentifier(); }));
}

RemoteDestination::RemoteDestination(std::string conninfo, std::string source_system_id, std::string database,
                                     const BemiDatabase *db, int connections)
    : conninfo_(std::move(conninfo)), source_system_id_(std::move(source_system_id)),
      database_(std::move(database)), db_(db), links_(std::max(connections, 1), nullptr),
      internal_jsonb_(links_.size(), false) {}

RemoteDestination::~RemoteDestination() {
	Disconnect();
}

void RemoteDestination::Disconnect() {
	for (pg_conn *&conn : links_) {
		if (conn != nullptr)
			PQfinish(conn); // a transaction in flight is rolled back, or committed: LoadProgress knows
		conn = nullptr;
	}
	progress_known_ = false;
	in_flight_.clear();
	failed_conn_ = nullptr;
	failed_.clear();
	moved_under_ = false;
}

void RemoteDestination::Fail(pg_conn *conn, const std::string &what) {
	std::string reason = conn != nullptr ? PQerrorMessage(conn) : "";
	while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' '))
		reason.pop_back();
	Disconnect();
	throw Error(ERRCODE_CONNECTION_FAILURE, fmt::format("bemi: the destination {}: {}", what, reason),
	            "Changes are kept in this server's WAL (within max_slot_wal_keep_size) and written once the "
	            "destination is back; the worker retries with a growing delay.",
	            "Check the destination named by bemi_status().destination: it runs, has CREATE EXTENSION "
	            "bemi, and the role the worker logs in as is granted bemi_ingest.");
}

pg_conn *RemoteDestination::Connect(size_t i) {
	if (links_[i] != nullptr) {
		if (PQstatus(links_[i]) != CONNECTION_OK)
			Fail(links_[i], "lost the connection");
		return links_[i];
	}
	std::string problem = ConninfoProblem(conninfo_.c_str());
	if (!problem.empty())
		throw Error(ERRCODE_INVALID_PARAMETER_VALUE,
		            fmt::format("bemi: the destination's connection string is refused: {}", problem), {},
		            "Call bemi_set_destination() with a connection string without a password; the "
		            "password goes in a password file (passfile) or a service file.");
	const char *encoding = PgCall([]() { return GetDatabaseEncodingName(); });
	// Defaults first; the expanded connection string overrides them; the encoding is ours.
	const char *keywords[] = {"connect_timeout", "keepalives_idle",  "keepalives_interval",
	                          "keepalives_count", "fallback_application_name", "dbname",
	                          "client_encoding", nullptr};
	const char *values[] = {"10", "30", "10", "3", "bemi worker", conninfo_.c_str(), encoding, nullptr};
	pg_conn *conn = PQconnectStartParams(keywords, values, 1);
	links_[i] = conn; // dropped with the others if anything below fails
	if (conn == nullptr || PQstatus(conn) == CONNECTION_BAD)
		Fail(conn, "cannot be reached");
	// connect_timeout is PQconnectdb's: polling, the deadline is ours.
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), kConnectTimeoutMs);
	for (PostgresPollingStatusType poll = PGRES_POLLING_WRITING; poll != PGRES_POLLING_OK;) {
		if (poll == PGRES_POLLING_FAILED)
			Fail(conn, "cannot be reached");
		long left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (left <= 0)
			Fail(conn, "cannot be reached (timeout)");
		if (!WaitSocket(conn, poll == PGRES_POLLING_READING ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE, left))
			continue; // the deadline, checked above
		poll = PQconnectPoll(conn);
	}
	if (PQsetnonblocking(conn, 1) != 0)
		Fail(conn, "cannot be reached");
	// Durable at COMMIT whatever the destination's default; names resolve only in pg_catalog; a
	// batch may wait for the one before it as long as that one takes.
	Exec(conn, "SET synchronous_commit = on; SET search_path = pg_catalog, pg_temp; SET DateStyle = ISO;"
	           " SET TimeZone = UTC; SET statement_timeout = 0; SET lock_timeout = 0;"
	           " SET idle_in_transaction_session_timeout = 0; SET plan_cache_mode = force_generic_plan");
	// A session the worker leaves behind (it let go of a destination that does not answer, or
	// was stopped) ends within a second even while it waits for a lock there, rather than
	// holding a connection slot until the lock goes. PostgreSQL 14 and later.
	if (PQserverVersion(conn) >= 140000)
		Exec(conn, "SET client_connection_check_interval = 1000");
	PGresult *res = Run(conn, kIngestUsable);
	bool ok = res != nullptr && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
	internal_jsonb_[i] = ok && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	if (!ok)
		Fail(conn, "cannot be read");
	if (internal_jsonb_[i]) {
		const Oid types[1] = {BYTEAOID};
		if (PQsendPrepare(conn, kIngestStatement, kIngest, 1, types) != 1)
			Fail(conn, "did not prepare bemi._ingest");
		bool prepared = true;
		while ((res = NextResult(conn)) != nullptr) {
			prepared = prepared && PQresultStatus(res) == PGRES_COMMAND_OK;
			PQclear(res);
		}
		if (!prepared)
			Fail(conn, "did not prepare bemi._ingest");
	}
	return conn;
}

bool RemoteDestination::WaitSocket(pg_conn *conn, int events, long timeout_ms) {
	int sock = PQsocket(conn);
	if (sock < 0)
		Fail(conn, "lost the connection");
	// The other connections' batches go on out meanwhile: waiting for one connection's COMMIT
	// must not starve the backend that reads the next batch. While any of them still holds data,
	// the wait is short.
	bool pending = false;
	for (const Sent &sent : in_flight_)
		if (links_[sent.link] != conn && PQflush(links_[sent.link]) == 1)
			pending = true;
	Advance(conn);
	if (pending && (timeout_ms < 0 || timeout_ms > kPumpMs))
		timeout_ms = kPumpMs;
	bool hold = db_->hold_pid != 0; // read unlocked: a hint, checked again below
	if (hold && (timeout_ms < 0 || timeout_ms > kHoldCheckMs))
		timeout_ms = kHoldCheckMs;
	bool ready = PgCall([&]() {
		int rc = WaitLatchOrSocket(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | events |
		                                        (timeout_ms >= 0 ? WL_TIMEOUT : 0),
		                           sock, timeout_ms, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
			ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		return (rc & events) != 0;
	});
	// DROP DATABASE and DROP EXTENSION wait for the worker (a bounded wait, then the drop fails or
	// leaves the slot behind): they must not wait for a destination that hangs. The batches in
	// flight are rolled back there; the destination's progress says where a next run resumes.
	if (db_->state == BEMI_PAUSED || db_->state == BEMI_STOPPING || HoldOverdue(ready)) {
		Disconnect();
		throw LetGoRequested();
	}
	return ready;
}

bool RemoteDestination::HoldOverdue(bool answered) {
	if (db_->hold_pid == 0 || answered) {
		hold_seen_at_ = 0;
		return false;
	}
	return PgCall([&]() {
		TimestampTz now = GetCurrentTimestamp();
		if (hold_seen_at_ == 0)
			hold_seen_at_ = now;
		return TimestampDifferenceExceeds(hold_seen_at_, now, kHoldPatienceMs);
	});
}

void RemoteDestination::Flush(pg_conn *conn) {
	for (;;) {
		int left = PQflush(conn);
		if (left == 0)
			return;
		if (left < 0)
			Fail(conn, "lost the connection");
		// Full send buffer: the destination may be waiting to send us something first.
		WaitSocket(conn, WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE);
		if (PQconsumeInput(conn) != 1)
			Fail(conn, "lost the connection");
	}
}

void RemoteDestination::Pump() noexcept {
	// Called inside the decoder's PgCall: nothing may leave by an exception (only libpq and
	// strings below; an allocation failure just leaves the pumping to the next wait).
	try {
		for (const Sent &sent : in_flight_)
			(void)PQflush(links_[sent.link]); // non-blocking: what the socket takes now
		Advance();
	} catch (...) {
	}
}

void RemoteDestination::Advance(pg_conn *skip) {
	using Stage = Sent::Stage;
	for (size_t i = 0; i < in_flight_.size() && failed_.empty(); i++) {
		Sent &sent = in_flight_[i];
		pg_conn *conn = links_[sent.link];
		if (sent.stage == Stage::kLocked)
			continue;
		if (conn == skip)
			return;
		if (PQconsumeInput(conn) != 1) {
			failed_conn_ = conn;
			failed_ = "lost the connection";
			return;
		}
		// Reads the results that have come, one by one; true once the query string has ended.
		auto read = [&](bool *ended) {
			*ended = false;
			while (!PQisBusy(conn)) {
				PGresult *res = PQgetResult(conn);
				if (res == nullptr) {
					*ended = true;
					return true;
				}
				ExecStatusType status = PQresultStatus(res);
				bool ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
				if (!ok) {
					const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
					moved_under_ = state != nullptr && strcmp(state, kMovedUnder) == 0;
					failed_conn_ = conn; // PQerrorMessage(conn) holds the result's message: Fail quotes it
					failed_ = "refused the batch";
					PQclear(res);
					return false;
				}
				// bemi._ingest answers the rows it wrote: all of them, or the batch is not committed.
				if (sent.stage == Stage::kCopying && status == PGRES_TUPLES_OK && sent.rows >= 0 &&
				    (PQntuples(res) != 1 || PQgetisnull(res, 0, 0) ||
				     strtoll(PQgetvalue(res, 0, 0), nullptr, 10) != sent.rows)) {
					failed_conn_ = conn;
					failed_ = "wrote another number of rows than were sent";
					PQclear(res);
					return false;
				}
				if (sent.stage == Stage::kFenceSent && status == PGRES_TUPLES_OK) {
					sent.stage = Stage::kLocked; // the COMMIT's answer is read by SettleOldest
					PQclear(res);
					return true;
				}
				PQclear(res);
			}
			return true;
		};
		bool ended = false;
		if (sent.stage == Stage::kCopying) {
			if (!read(&ended))
				return;
			if (!ended)
				return; // the COPY is still going: the batches after it wait
			sent.stage = Stage::kCopied;
		}
		if (sent.stage == Stage::kCopied) {
			if (i > 0 && in_flight_[i - 1].stage != Stage::kLocked)
				return; // the batch before does not hold the progress row yet
			if (PQsendQuery(conn, sent.fence.c_str()) != 1) {
				failed_conn_ = conn;
				failed_ = "did not take the COMMIT";
				return;
			}
			(void)PQflush(conn);
			sent.stage = Stage::kFenceSent;
		}
		if (sent.stage == Stage::kFenceSent && (!read(&ended) || sent.stage != Stage::kLocked))
			return;
	}
}

void RemoteDestination::RaiseFailure() {
	if (failed_.empty())
		return;
	if (moved_under_) {
		Disconnect(); // the next run reads the destination's progress again
		throw Error(ERRCODE_T_R_SERIALIZATION_FAILURE,
		            "bemi: this source's progress on the destination moved under the worker",
		            fmt::format("bemi.source_progress there no longer holds what this worker wrote last for "
		                        "source {}, database \"{}\".",
		                        source_system_id_, database_),
		            "Another worker writes there as this source (a copy of this server?). This worker "
		            "starts again from what the destination holds.");
	}
	std::string what = failed_;
	pg_conn *conn = failed_conn_;
	Fail(conn, what);
}

PGresult *RemoteDestination::NextResult(pg_conn *conn) {
	Flush(conn);
	while (PQisBusy(conn)) {
		WaitSocket(conn, WL_SOCKET_READABLE);
		if (PQconsumeInput(conn) != 1)
			Fail(conn, "lost the connection");
	}
	return PQgetResult(conn);
}

PGresult *RemoteDestination::Run(pg_conn *conn, const char *sql, int nparams, const char *const *params) {
	bool sent = nparams == 0 ? PQsendQuery(conn, sql) == 1
	                         : PQsendQueryParams(conn, sql, nparams, nullptr, params, nullptr, nullptr, 0) == 1;
	if (!sent)
		Fail(conn, fmt::format("did not take \"{:.40}\"", sql));
	// The last result of the query string (a COPY's, once it waits for rows).
	PGresult *last = nullptr;
	for (;;) {
		PGresult *res = NextResult(conn);
		if (res == nullptr)
			break;
		PQclear(last);
		last = res;
		if (PQresultStatus(res) == PGRES_COPY_IN)
			break;
	}
	return last;
}

void RemoteDestination::Exec(pg_conn *conn, const char *sql) {
	PGresult *res = Run(conn, sql);
	ExecStatusType status = res != nullptr ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	PQclear(res);
	if (status != PGRES_COMMAND_OK)
		Fail(conn, fmt::format("refused \"{:.40}\"", sql));
}

std::optional<Progress> RemoteDestination::LoadProgress() {
	pg_conn *conn = Connect(0);
	const char *params[2] = {source_system_id_.c_str(), database_.c_str()};
	PGresult *res = Run(conn,
	                    "SELECT txn_end_lsn, txn_records, txn_complete, gaps_forwarded FROM bemi.source_progress"
	                    " WHERE source_system_id = $1 AND database = $2",
	                    2, params);
	if (res == nullptr || PQresultStatus(res) != PGRES_TUPLES_OK) {
		PQclear(res);
		Fail(conn, "cannot be read");
	}
	remote_.reset();
	gaps_forwarded_ = 0;
	if (PQntuples(res) == 1) {
		Progress p;
		uint32 hi = 0, lo = 0;
		if (sscanf(PQgetvalue(res, 0, 0), "%X/%X", &hi, &lo) != 2) {
			PQclear(res);
			Fail(conn, "returned a progress that is not an LSN");
		}
		p.txn_end_lsn = (static_cast<XLogRecPtr>(hi) << 32) | lo;
		char *end_records = nullptr;
		char *end_gaps = nullptr;
		p.txn_records = strtoll(PQgetvalue(res, 0, 1), &end_records, 10);
		p.txn_complete = PQgetvalue(res, 0, 2)[0] == 't';
		int64 gaps = strtoll(PQgetvalue(res, 0, 3), &end_gaps, 10);
		if (*end_records != '\0' || *end_gaps != '\0' || PQgetisnull(res, 0, 1) || PQgetisnull(res, 0, 3)) {
			PQclear(res);
			Fail(conn, "returned a progress that is not a number");
		}
		remote_ = p;
		gaps_forwarded_ = gaps;
	}
	PQclear(res);
	progress_known_ = true;
	return remote_;
}

RemoteDestination::BuiltRows RemoteDestination::BuildRows(const Batch &batch, size_t first, size_t count,
                                                          const std::vector<char> &empty_context,
                                                          const std::vector<int64> &ids, bool internal_jsonb) const {
	const char *source = source_system_id_.c_str();
	const char *database = database_.c_str();
	size_t rows = batch.Rows().size();
	return PgCall([&]() {
		StringInfoData out;
		MemoryContext context = AllocSetContextCreate(CurrentMemoryContext, "bemi copy", ALLOCSET_DEFAULT_SIZES);
		MemoryContext caller = MemoryContextSwitchTo(context);
		initStringInfo(&out); // in `context`: copied out below
		if (first == 0) {
			appendBinaryStringInfo(&out, kCopySignature, sizeof(kCopySignature) - 1);
			pq_sendint32(&out, 0); // flags
			pq_sendint32(&out, 0); // header extension
		}
		TimestampTz created = GetCurrentTimestamp();
		for (size_t i = first; i < first + count; i++) {
			const Batch::Row &row = batch.Rows()[i];
			pq_sendint16(&out, kCopyColumns);
			AppendInt64Field(&out, static_cast<uint64>(ids[i]));
			if (row.pk == Batch::kNone)
				pq_sendint32(&out, static_cast<uint32>(-1));
			else
				AppendTextField(&out, batch.At(row.pk));
			auto jsonb = internal_jsonb ? AppendJsonbInternalField : AppendJsonbField;
			jsonb(&out, batch.At(row.before));
			jsonb(&out, batch.At(row.after));
			jsonb(&out, row.context == Batch::kNone ? empty_context.data() : batch.At(row.context));
			AppendBytesField(&out, database, strlen(database));
			AppendTextField(&out, batch.At(row.schema));
			AppendTextField(&out, batch.At(row.table));
			AppendTextField(&out, batch.At(row.operation));
			AppendInt64Field(&out, static_cast<uint64>(row.committed));
			AppendInt64Field(&out, static_cast<uint64>(row.xid));
			AppendInt64Field(&out, static_cast<uint64>(row.position));
			AppendBytesField(&out, source, strlen(source));
			AppendInt64Field(&out, static_cast<uint64>(created));
		}
		if (first + count == rows)
			pq_sendint16(&out, static_cast<uint16>(-1)); // the trailer
		MemoryContextSwitchTo(caller);
		return BuiltRows{out.data, out.len, context};
	});
}

void RemoteDestination::FreeRows(const BuiltRows &built) const {
	PgCall([&]() { MemoryContextDelete(built.context); });
}

std::string RemoteDestination::CopyData(const Batch &batch, size_t first, size_t count,
                                        const std::vector<char> &empty_context, const std::vector<int64> &ids) const {
	BuiltRows built = BuildRows(batch, first, count, empty_context, ids, false);
	std::string data;
	try {
		data.assign(built.data, built.len);
	} catch (...) {
		FreeRows(built);
		throw;
	}
	FreeRows(built);
	return data;
}

std::vector<int64> RemoteDestination::DrawIds(pg_conn *conn, size_t count, bool begin) {
	// One row: the first and last id drawn, and all of them only when they are not consecutive
	// (another source drew some in between).
	std::string sql = fmt::format(
	    "{}SELECT min(v), max(v), CASE WHEN max(v) - min(v) + 1 = count(*) THEN NULL ELSE array_agg(v ORDER BY v)::text END"
	    " FROM (SELECT nextval('bemi.changes_id_seq'::regclass) AS v FROM generate_series(1, {})) AS drawn",
	    begin ? "BEGIN; " : "", count);
	PGresult *res = Run(conn, sql.c_str());
	if (res == nullptr || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		PQclear(res);
		Fail(conn, "did not give ids from bemi.changes_id_seq");
	}
	std::vector<int64> ids;
	ids.reserve(count);
	if (PQgetisnull(res, 0, 2)) {
		int64 first = strtoll(PQgetvalue(res, 0, 0), nullptr, 10);
		for (size_t i = 0; i < count; i++)
			ids.push_back(first + static_cast<int64>(i));
	} else {
		const char *p = PQgetvalue(res, 0, 2); // {1,2,...}
		while (*p != '\0') {
			if (*p == '{' || *p == ',' || *p == '}') {
				p++;
				continue;
			}
			char *end = nullptr;
			ids.push_back(strtoll(p, &end, 10));
			if (end == p)
				break;
			p = end;
		}
	}
	PQclear(res);
	if (ids.size() != count)
		Fail(conn, "did not give as many ids as rows");
	return ids;
}

std::string RemoteDestination::Fence(pg_conn *conn, const Progress &reached, int64 forwarded) {
	auto literal = [&](const std::string &value) {
		char *quoted = PQescapeLiteral(conn, value.data(), value.size());
		if (quoted == nullptr)
			Fail(conn, "could not quote a value");
		std::string text(quoted);
		PQfreemem(quoted);
		return text;
	};
	return fmt::format(fmt::runtime(kProgress), literal(source_system_id_), literal(database_),
	                   LsnText(reached.txn_end_lsn), reached.txn_records, reached.txn_complete ? "true" : "false",
	                   remote_ ? "'" + LsnText(remote_->txn_end_lsn) + "'" : std::string("NULL"),
	                   remote_ ? std::to_string(remote_->txn_records) : std::string("NULL"),
	                   remote_ ? (remote_->txn_complete ? "true" : "false") : "NULL", forwarded);
}

void RemoteDestination::SendIngest(pg_conn *conn, const Batch &batch, const std::vector<char> &empty_context,
                                   const std::vector<int64> &ids) {
	// The whole batch in one statement: its bytes are queued in libpq at once and go out as the
	// socket takes them, with Pump(). Send sends a batch past the queue's bound by COPY, streamed,
	// so that what libpq holds stays bounded (it keeps its buffer's size).
	BuiltRows built;
	try {
		built = BuildRows(batch, 0, batch.Rows().size(), empty_context, ids, true);
	} catch (...) {
		Disconnect();
		throw;
	}
	const char *values[1] = {built.data};
	const int lengths[1] = {built.len};
	const int formats[1] = {1};
	bool taken = PQsendQueryPrepared(conn, kIngestStatement, 1, values, lengths, formats, 0) == 1;
	FreeRows(built);
	if (!taken || PQflush(conn) < 0)
		Fail(conn, "did not take the batch");
}

void RemoteDestination::SendCopy(pg_conn *conn, const Batch &batch, const std::vector<char> &empty_context,
                                 const std::vector<int64> &ids) {
	constexpr size_t kChunkRows = 200;
	size_t rows = batch.Rows().size();
	size_t queued = 0; // COPY data queued in libpq since it last had nothing left to send
	// Run returns when the destination waits for rows.
	PGresult *res = Run(conn, kCopy);
	bool copying = res != nullptr && PQresultStatus(res) == PGRES_COPY_IN;
	PQclear(res);
	if (!copying)
		Fail(conn, "refused COPY into bemi.changes");
	for (size_t first = 0; first < rows; first += kChunkRows) {
		std::string text;
		try {
			text = CopyData(batch, first, std::min(kChunkRows, rows - first), empty_context, ids);
		} catch (...) {
			Disconnect(); // the COPY and its transaction are rolled back with the connection
			throw;
		}
		// Queued in libpq (non-blocking: it grows its buffer) and sent as far as the socket
		// takes it now; the rest goes with Pump() while the worker decodes. What stays queued
		// is bounded (libpq keeps its buffer at the largest size it reached).
		queued += text.size();
		if (PQputCopyData(conn, text.data(), static_cast<int>(text.size())) != 1)
			Fail(conn, "did not take the batch");
		int left = PQflush(conn);
		if (left < 0)
			Fail(conn, "did not take the batch");
		if (left == 0 || queued > kQueuedBytes) {
			Flush(conn);
			queued = 0;
		}
	}
	if (PQputCopyEnd(conn, nullptr) != 1 || PQflush(conn) < 0)
		Fail(conn, "did not take the batch");
}

void RemoteDestination::Send(const Batch &batch, const std::vector<char> &empty_context, const Progress &reached,
                             const std::vector<Gap> &gaps) {
	size_t rows = batch.Rows().size();
	RaiseFailure();
	if (Full())
		SettleOldest();
	if (!progress_known_)
		LoadProgress(); // after a failure nothing is in flight: the connections were dropped
	size_t link = next_link_;
	pg_conn *conn = Connect(link);
	bool begun = false;
	// The source's gaps, named by it: what its trail misses is visible where the trail is.
	for (const Gap &gap : gaps) {
		if (!begun)
			Exec(conn, "BEGIN");
		begun = true;
		const char *values[9] = {gap.detected_at.c_str(),
		                         gap.from_lsn ? gap.from_lsn->c_str() : nullptr,
		                         gap.to_lsn.c_str(),
		                         gap.reason.c_str(),
		                         gap.relation ? gap.relation->c_str() : nullptr,
		                         gap.role ? gap.role->c_str() : nullptr,
		                         gap.statement ? gap.statement->c_str() : nullptr,
		                         source_system_id_.c_str(),
		                         database_.c_str()};
		PGresult *res = Run(conn,
		                    "INSERT INTO bemi.gaps (detected_at, from_lsn, to_lsn, reason, relation, role, statement,"
		                    " source_system_id, source_database) VALUES ($1::timestamptz, $2::pg_lsn, $3::pg_lsn,"
		                    " $4, $5, $6, $7, $8, $9)",
		                    9, values);
		bool ok = res != nullptr && PQresultStatus(res) == PGRES_COMMAND_OK;
		PQclear(res);
		if (!ok)
			Fail(conn, "refused a gap in bemi.gaps");
	}
	int64 forwarded = gaps.empty() ? gaps_forwarded_ : gaps.back().id;
	Sent sent{link, Fence(conn, reached, forwarded), Sent::Stage::kCopied};
	if (rows > 0) {
		std::vector<int64> ids = DrawIds(conn, rows, !begun);
		if (internal_jsonb_[link] && batch.Bytes() <= kQueuedBytes) {
			SendIngest(conn, batch, empty_context, ids);
			sent.rows = static_cast<int64>(rows);
		} else {
			SendCopy(conn, batch, empty_context, ids);
		}
		sent.stage = Sent::Stage::kCopying;
	} else if (!begun) {
		Exec(conn, "BEGIN");
	}
	in_flight_.push_back(std::move(sent));
	next_link_ = (link + 1) % links_.size();
	remote_ = reached;
	gaps_forwarded_ = forwarded;
	Advance();
}

void RemoteDestination::SettleOldest() {
	if (in_flight_.empty())
		return;
	pg_conn *conn = links_[in_flight_.front().link];
	// Its COPY done and its fence answered (it is the oldest: no batch before it to wait for).
	for (;;) {
		Advance();
		// Locked: its COMMIT's answer is read first, so that a failure of a later batch (which
		// Advance may have found meanwhile) is not blamed for this one's.
		if (in_flight_.front().stage == Sent::Stage::kLocked)
			break;
		RaiseFailure();
		int events = WL_SOCKET_READABLE;
		int left = PQflush(conn);
		if (left < 0)
			Fail(conn, "lost the connection");
		if (left > 0)
			events |= WL_SOCKET_WRITEABLE;
		WaitSocket(conn, events);
		Advance(); // conn included: what came is read above, in the next turn
	}
	// The COMMIT's answer: it must have committed (an aborted transaction answers COMMIT with
	// ROLLBACK).
	bool ok = true, committed = false;
	PGresult *res;
	while ((res = NextResult(conn)) != nullptr) {
		ExecStatusType status = PQresultStatus(res);
		ok = ok && status == PGRES_COMMAND_OK;
		committed = status == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;
		PQclear(res);
	}
	if (!ok || !committed)
		Fail(conn, "refused the batch");
	in_flight_.pop_front();
}

} // namespace bemi
