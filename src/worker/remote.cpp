// remote.cpp: writing the worker's batches into another PostgreSQL's bemi.changes (issue 16).
//
// Runs in the worker, which calls it instead of its local insert when bemi.destination names a
// connection string (batch.cpp). Per batch, one transaction on the destination:
//   1. the source's row of bemi.source_progress is moved from what we last knew to the batch's
//      progress (INSERT ... ON CONFLICT DO UPDATE ... WHERE it is still what we knew): it locks the
//      row, so two writers for one source cannot interleave, and one that finds the row moved
//      fails instead of writing twice;
//   2. the rows, by COPY bemi.changes (...) FROM STDIN in binary format: ids come from the
//      destination's identity;
//   3. COMMIT, with synchronous_commit = on, in the same query string as the COPY: the
//      destination commits as soon as the rows are in, without a round trip.
// Pipelined: Send returns once the COMMIT is on its way, and the worker decodes the next batch
// while the destination parses, inserts and flushes this one. Only once Settle() has read the
// COMMIT's answer (the rows are durable there) does the worker update its local bemi.progress and
// confirm its slot (batch.cpp, worker.cpp), so a crash anywhere resumes from what the destination
// holds (LoadProgress, at start), and nothing is lost or written twice across the two servers.
//
// Waiting: the connection is non-blocking, and every wait for the destination (connecting,
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

// created_at is sent (the time the worker made the rows): with its volatile default
// (clock_timestamp()) left to the destination, COPY would insert row by row instead of in
// multi-insert batches.
const char *const kCopy =
    "COPY bemi.changes (primary_key, \"before\", \"after\", context, database, schema, \"table\", operation,"
    " committed_at, transaction_id, position, source_system_id, created_at) FROM STDIN (FORMAT binary); COMMIT";

// Fenced: the row moves only from what this worker last knew ($6..$8; NULL: no row), else no row
// comes back. The worker's session has search_path = pg_catalog, pg_temp.
const char *const kProgress =
    "INSERT INTO bemi.source_progress AS p (source_system_id, database, txn_end_lsn, txn_records, "
    "txn_complete, gaps_forwarded) VALUES ($1, $2, $3::pg_lsn, $4::bigint, $5::boolean, $9::bigint)"
    " ON CONFLICT (source_system_id, database) DO UPDATE SET txn_end_lsn = excluded.txn_end_lsn,"
    " txn_records = excluded.txn_records, txn_complete = excluded.txn_complete,"
    " gaps_forwarded = excluded.gaps_forwarded, updated_at = now()"
    " WHERE p.txn_end_lsn = $6::pg_lsn AND p.txn_records = $7::bigint AND p.txn_complete = $8::boolean"
    " RETURNING 1";

std::string LsnText(XLogRecPtr lsn) {
	return fmt::format("{:X}/{:X}", static_cast<uint32>(lsn >> 32), static_cast<uint32>(lsn));
}

// COPY's binary format (the COPY statement's column order): a field is its length and its
// bytes in the type's send format, -1 for NULL; integers in network order (libpq/pqformat.h).
// Times, ids and positions go as 8-byte integers: the destination parses none of them.
// C-style (StringInfo).
constexpr int16 kCopyColumns = 13;
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

// jsonb's send format: a version byte (1), then the document as text.
void AppendJsonbField(StringInfo out, const char *varlena) {
	const Jsonb *jb = reinterpret_cast<const Jsonb *>(varlena);
	int at = out->len;
	pq_sendint32(out, 0); // the length, filled in below
	pq_sendbyte(out, 1);
	int start = out->len;
	(void)JsonbToCString(out, const_cast<JsonbContainer *>(&jb->root), VARSIZE(jb));
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
                                     const BemiDatabase *db)
    : conninfo_(std::move(conninfo)), source_system_id_(std::move(source_system_id)),
      database_(std::move(database)), db_(db) {}

RemoteDestination::~RemoteDestination() {
	Disconnect();
}

void RemoteDestination::Disconnect() {
	if (conn_ != nullptr)
		PQfinish(conn_); // a transaction in flight is rolled back, or committed: LoadProgress knows
	conn_ = nullptr;
	progress_known_ = false;
	in_flight_.reset();
}

void RemoteDestination::Fail(const std::string &what) {
	std::string reason = conn_ != nullptr ? PQerrorMessage(conn_) : "";
	while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' '))
		reason.pop_back();
	Disconnect();
	throw Error(ERRCODE_CONNECTION_FAILURE, fmt::format("bemi: the destination {}: {}", what, reason),
	            "Changes are kept in this server's WAL (within max_slot_wal_keep_size) and written once the "
	            "destination is back; the worker retries with a growing delay.",
	            "Check the destination named by bemi_status().destination: it runs, has CREATE EXTENSION "
	            "bemi, and the role the worker logs in as is granted bemi_ingest.");
}

void RemoteDestination::Connect() {
	if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK)
		return;
	Disconnect();
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
	conn_ = PQconnectStartParams(keywords, values, 1);
	if (conn_ == nullptr || PQstatus(conn_) == CONNECTION_BAD)
		Fail("cannot be reached");
	// connect_timeout is PQconnectdb's: polling, the deadline is ours.
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), kConnectTimeoutMs);
	for (PostgresPollingStatusType poll = PGRES_POLLING_WRITING; poll != PGRES_POLLING_OK;) {
		if (poll == PGRES_POLLING_FAILED)
			Fail("cannot be reached");
		long left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (left <= 0)
			Fail("cannot be reached (timeout)");
		if (!WaitSocket(poll == PGRES_POLLING_READING ? WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE, left))
			continue; // the deadline, checked above
		poll = PQconnectPoll(conn_);
	}
	if (PQsetnonblocking(conn_, 1) != 0)
		Fail("cannot be reached");
	// Durable at COMMIT whatever the destination's default; names resolve only in pg_catalog.
	Exec("SET synchronous_commit = on; SET search_path = pg_catalog, pg_temp; SET DateStyle = ISO;"
	     " SET TimeZone = UTC; SET statement_timeout = 0");
}

bool RemoteDestination::WaitSocket(int events, long timeout_ms) {
	int sock = PQsocket(conn_);
	if (sock < 0)
		Fail("lost the connection");
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
	// leaves the slot behind): they must not wait for a destination that hangs. The batch in
	// flight is rolled back there; the destination's progress says where a next run resumes.
	if (db_->state == BEMI_PAUSED || db_->state == BEMI_STOPPING) {
		Disconnect();
		throw LetGoRequested();
	}
	return ready;
}

void RemoteDestination::Flush() {
	for (;;) {
		int left = PQflush(conn_);
		if (left == 0)
			return;
		if (left < 0)
			Fail("lost the connection");
		// Full send buffer: the destination may be waiting to send us something first.
		WaitSocket(WL_SOCKET_WRITEABLE | WL_SOCKET_READABLE);
		if (PQconsumeInput(conn_) != 1)
			Fail("lost the connection");
	}
}

PGresult *RemoteDestination::NextResult() {
	Flush();
	while (PQisBusy(conn_)) {
		WaitSocket(WL_SOCKET_READABLE);
		if (PQconsumeInput(conn_) != 1)
			Fail("lost the connection");
	}
	return PQgetResult(conn_);
}

PGresult *RemoteDestination::Run(const char *sql, int nparams, const char *const *params) {
	bool sent = nparams == 0 ? PQsendQuery(conn_, sql) == 1
	                         : PQsendQueryParams(conn_, sql, nparams, nullptr, params, nullptr, nullptr, 0) == 1;
	if (!sent)
		Fail(fmt::format("did not take \"{:.40}\"", sql));
	// The last result of the query string (a COPY's, once it waits for rows).
	PGresult *last = nullptr;
	for (;;) {
		PGresult *res = NextResult();
		if (res == nullptr)
			break;
		PQclear(last);
		last = res;
		if (PQresultStatus(res) == PGRES_COPY_IN)
			break;
	}
	return last;
}

void RemoteDestination::Exec(const char *sql) {
	PGresult *res = Run(sql);
	bool ok = res != nullptr && PQresultStatus(res) == PGRES_COMMAND_OK;
	PQclear(res);
	if (!ok)
		Fail(fmt::format("refused \"{:.40}\"", sql));
}

std::optional<Progress> RemoteDestination::LoadProgress() {
	Connect();
	const char *params[2] = {source_system_id_.c_str(), database_.c_str()};
	PGresult *res = Run("SELECT txn_end_lsn, txn_records, txn_complete, gaps_forwarded FROM bemi.source_progress"
	                    " WHERE source_system_id = $1 AND database = $2",
	                    2, params);
	if (res == nullptr || PQresultStatus(res) != PGRES_TUPLES_OK) {
		PQclear(res);
		Fail("cannot be read");
	}
	remote_.reset();
	gaps_forwarded_ = 0;
	if (PQntuples(res) == 1) {
		Progress p;
		uint32 hi = 0, lo = 0;
		if (sscanf(PQgetvalue(res, 0, 0), "%X/%X", &hi, &lo) != 2) {
			PQclear(res);
			Fail("returned a progress that is not an LSN");
		}
		p.txn_end_lsn = (static_cast<XLogRecPtr>(hi) << 32) | lo;
		char *end_records = nullptr;
		char *end_gaps = nullptr;
		p.txn_records = strtoll(PQgetvalue(res, 0, 1), &end_records, 10);
		p.txn_complete = PQgetvalue(res, 0, 2)[0] == 't';
		int64 gaps = strtoll(PQgetvalue(res, 0, 3), &end_gaps, 10);
		if (*end_records != '\0' || *end_gaps != '\0' || PQgetisnull(res, 0, 1) || PQgetisnull(res, 0, 3)) {
			PQclear(res);
			Fail("returned a progress that is not a number");
		}
		remote_ = p;
		gaps_forwarded_ = gaps;
	}
	PQclear(res);
	progress_known_ = true;
	return remote_;
}

std::string RemoteDestination::CopyData(const Batch &batch, size_t first, size_t count,
                                        const std::vector<char> &empty_context) const {
	struct Built {
		char *data;
		int len;
	};
	const char *source = source_system_id_.c_str();
	const char *database = database_.c_str();
	size_t rows = batch.Rows().size();
	Built built = PgCall([&]() {
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
			if (row.pk == Batch::kNone)
				pq_sendint32(&out, static_cast<uint32>(-1));
			else
				AppendTextField(&out, batch.At(row.pk));
			AppendJsonbField(&out, batch.At(row.before));
			AppendJsonbField(&out, batch.At(row.after));
			AppendJsonbField(&out, row.context == Batch::kNone ? empty_context.data() : batch.At(row.context));
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
		Built b{static_cast<char *>(palloc(out.len + 1)), out.len};
		memcpy(b.data, out.data, out.len);
		MemoryContextDelete(context);
		return b;
	});
	std::string data(built.data, built.len);
	PgCall([&]() { pfree(built.data); });
	return data;
}

void RemoteDestination::Send(const Batch &batch, const std::vector<char> &empty_context, const Progress &reached,
                             const std::vector<Gap> &gaps) {
	constexpr size_t kChunkRows = 200;
	size_t rows = batch.Rows().size();
	Settle(); // one transaction at a time: the progress check below starts from its end
	if (!progress_known_)
		LoadProgress();
	Connect();
	Exec("BEGIN");
	std::string lsn = LsnText(reached.txn_end_lsn), records = std::to_string(reached.txn_records);
	std::string known_lsn, known_records;
	if (remote_) {
		known_lsn = LsnText(remote_->txn_end_lsn);
		known_records = std::to_string(remote_->txn_records);
	}
	int64 forwarded = gaps.empty() ? gaps_forwarded_ : gaps.back().id;
	std::string forwarded_text = std::to_string(forwarded);
	const char *params[9] = {source_system_id_.c_str(),
	                         database_.c_str(),
	                         lsn.c_str(),
	                         records.c_str(),
	                         reached.txn_complete ? "true" : "false",
	                         remote_ ? known_lsn.c_str() : nullptr,
	                         remote_ ? known_records.c_str() : nullptr,
	                         remote_ ? (remote_->txn_complete ? "true" : "false") : nullptr,
	                         forwarded_text.c_str()};
	PGresult *res = Run(kProgress, 9, params);
	ExecStatusType status = res != nullptr ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	int moved = status == PGRES_TUPLES_OK ? PQntuples(res) : -1;
	PQclear(res);
	if (moved < 0)
		Fail("refused the progress update");
	if (moved == 0) {
		Disconnect(); // rolls back; the next run reads the destination's progress again
		throw Error(ERRCODE_T_R_SERIALIZATION_FAILURE,
		            "bemi: this source's progress on the destination moved under the worker",
		            fmt::format("bemi.source_progress there no longer holds what this worker wrote last for "
		                        "source {}, database \"{}\".",
		                        source_system_id_, database_),
		            "Another worker writes there as this source (a copy of this server?). This worker "
		            "starts again from what the destination holds.");
	}
	// The source's gaps, named by it: what its trail misses is visible where the trail is.
	for (const Gap &gap : gaps) {
		const char *values[9] = {gap.detected_at.c_str(),
		                         gap.from_lsn ? gap.from_lsn->c_str() : nullptr,
		                         gap.to_lsn.c_str(),
		                         gap.reason.c_str(),
		                         gap.relation ? gap.relation->c_str() : nullptr,
		                         gap.role ? gap.role->c_str() : nullptr,
		                         gap.statement ? gap.statement->c_str() : nullptr,
		                         source_system_id_.c_str(),
		                         database_.c_str()};
		res = Run("INSERT INTO bemi.gaps (detected_at, from_lsn, to_lsn, reason, relation, role, statement,"
		          " source_system_id, source_database) VALUES ($1::timestamptz, $2::pg_lsn, $3::pg_lsn,"
		          " $4, $5, $6, $7, $8, $9)",
		          9, values);
		bool ok = res != nullptr && PQresultStatus(res) == PGRES_COMMAND_OK;
		PQclear(res);
		if (!ok)
			Fail("refused a gap in bemi.gaps");
	}
	if (rows > 0) {
		// The COPY and the COMMIT after it: Run returns when the destination waits for rows.
		res = Run(kCopy);
		bool copying = res != nullptr && PQresultStatus(res) == PGRES_COPY_IN;
		PQclear(res);
		if (!copying)
			Fail("refused COPY into bemi.changes");
		for (size_t first = 0; first < rows; first += kChunkRows) {
			std::string text;
			try {
				text = CopyData(batch, first, std::min(kChunkRows, rows - first), empty_context);
			} catch (...) {
				Disconnect(); // the COPY and its transaction are rolled back with the connection
				throw;
			}
			// Non-blocking: 0 is a full buffer, sent below before more is queued.
			int put;
			while ((put = PQputCopyData(conn_, text.data(), static_cast<int>(text.size()))) == 0)
				Flush();
			if (put != 1)
				Fail("did not take the batch");
			Flush();
		}
		int ended;
		while ((ended = PQputCopyEnd(conn_, nullptr)) == 0)
			Flush();
		if (ended != 1)
			Fail("did not take the batch");
		Flush();
	} else {
		if (PQsendQuery(conn_, "COMMIT") != 1)
			Fail("did not take the COMMIT");
		Flush();
	}
	in_flight_ = Sent{reached, forwarded};
}

void RemoteDestination::Settle() {
	if (!in_flight_)
		return;
	// Every statement sent must have succeeded, the last a COMMIT that committed (an aborted
	// transaction answers COMMIT with ROLLBACK).
	bool ok = true, committed = false;
	PGresult *res;
	while ((res = NextResult()) != nullptr) {
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			ok = false;
		committed = strcmp(PQcmdStatus(res), "COMMIT") == 0;
		PQclear(res);
	}
	if (!ok || !committed)
		Fail("refused the batch");
	remote_ = in_flight_->reached;
	gaps_forwarded_ = in_flight_->gaps_forwarded;
	in_flight_.reset();
}

} // namespace bemi
