// remote.hpp: the trail in another database (issue 16). A RemoteDestination writes the worker's
// batches into bemi.changes of another PostgreSQL over libpq, with the source's progress in that
// database's bemi.source_progress in the same transaction (remote.cpp). Worker code, and the
// connection-string check that bemi_set_destination shares (src/fn/destination.cpp).
#pragma once

#include "sink.hpp"

#include <deque>
#include <optional>
#include <string>
#include <vector>

struct pg_conn;
struct pg_result;

namespace bemi {

// Why a connection string cannot be a destination's (not parseable; it holds a password), or
// empty. Never quotes the string: it may hold a secret.
std::string ConninfoProblem(const char *conninfo);

// Thrown by a wait for the destination when DROP DATABASE or DROP EXTENSION of the source database
// asks the worker to let go, or a statement that may drop the extension asked it to hold still and
// the destination has not answered for a second (the connections are closed, the batches in flight
// rolled back there): the worker then lets go as it would between batches.
struct LetGoRequested : std::exception {
	const char *what() const noexcept override { return "bemi: the worker was asked to let go"; }
};

// A row of the source's bemi.gaps, to be copied to the destination's (NULLs as nullopt).
struct Gap {
	int64 id;
	std::string detected_at, to_lsn, reason;
	std::optional<std::string> from_lsn, relation, role, statement;
};

// The source's bemi.gaps rows after `after` (at most `limit`), oldest first. Its own transaction.
std::vector<Gap> LoadGaps(int64 after, int limit);

// Batches go out on `connections` connections at once, each batch one transaction on the next
// connection; they commit in the order they were sent (remote.cpp says how).
class RemoteDestination {
  public:
	// source_system_id, database: how this source's changes and progress are named there. db: the
	// source database's entry, whose DROP DATABASE or DROP EXTENSION ends any wait for the destination.
	RemoteDestination(std::string conninfo, std::string source_system_id, std::string database, const BemiDatabase *db,
	                  int connections);
	RemoteDestination(const RemoteDestination &) = delete;
	RemoteDestination &operator=(const RemoteDestination &) = delete;
	~RemoteDestination();

	// The destination's progress for this source (connecting first); nullopt when it has none.
	// Remembered: each batch's progress update checks that nobody moved it meanwhile.
	std::optional<Progress> LoadProgress();
	// Sends a batch as one transaction on the next connection, which must be free (!Full()):
	// the gaps, the rows (through bemi._ingest, or by COPY); then, once that is done and the
	// batch before holds the progress row (Advance), the progress check and update and COMMIT with
	// synchronous_commit = on. The rows are turned into COPY's binary format (a few hundred at a
	// time for COPY, at once for bemi._ingest); what the socket does not take at once stays
	// queued in libpq and goes out with Pump() and SettleOldest(), so
	// the worker decodes the next batch while the destination parses and inserts this one. Throws
	// on failure (every connection is then dropped, and made again next time). empty_context: the
	// jsonb of a change without context.
	void Send(const Batch &batch, const std::vector<char> &empty_context, const Progress &reached,
	          const std::vector<Gap> &gaps);
	// Batches sent and their COMMIT's answer not yet read, oldest first.
	size_t InFlight() const { return in_flight_.size(); }
	// Every connection has a batch in flight: SettleOldest() before the next Send.
	bool Full() const { return in_flight_.size() >= links_.size(); }
	// Waits for the oldest batch in flight: returns once the destination has it durably, throws
	// otherwise (and every batch in flight is then lost there: the next run resumes from the
	// destination's progress).
	void SettleOldest();
	// Pushes queued COPY data towards the destination and moves the batches in flight along
	// (Advance), without waiting. Never throws: a failure is raised by the next Send or SettleOldest.
	void Pump() noexcept;
	// The last of this source's gaps the batches sent so far carry (bemi.source_progress.gaps_forwarded
	// once they commit).
	int64 GapsForwarded() const { return gaps_forwarded_; }

  private:
	// Rows first .. first + count - 1 of a batch in COPY's binary format, in the column order of
	// Send's COPY (with the format's header before the first row, its trailer after the last);
	// ids: the rows' ids, drawn there.
	std::string CopyData(const Batch &batch, size_t first, size_t count, const std::vector<char> &empty_context,
	                     const std::vector<int64> &ids) const;
	// The same, in a memory context of its own (FreeRows deletes it); internal_jsonb: each jsonb
	// in PostgreSQL's own format (for bemi._ingest), not as text.
	struct BuiltRows {
		const char *data = nullptr;
		int len = 0;
		MemoryContext context = nullptr;
	};
	BuiltRows BuildRows(const Batch &batch, size_t first, size_t count, const std::vector<char> &empty_context,
	                    const std::vector<int64> &ids, bool internal_jsonb) const;
	void FreeRows(const BuiltRows &built) const;
	// The batch's rows on conn, in its transaction: by bemi._ingest (one statement, its answer
	// read by Advance), or by COPY, streamed; the connections are dropped on failure.
	void SendIngest(pg_conn *conn, const Batch &batch, const std::vector<char> &empty_context,
	                const std::vector<int64> &ids);
	void SendCopy(pg_conn *conn, const Batch &batch, const std::vector<char> &empty_context,
	              const std::vector<int64> &ids);
	// Connection i, connected (and set up) if it was not.
	pg_conn *Connect(size_t i);
	void Disconnect(); // every connection: what is in flight is rolled back there, or committed
	[[noreturn]] void Fail(pg_conn *conn, const std::string &what);
	// Waits for conn's socket (WL_SOCKET_* events) or timeout_ms (-1: none), serving interrupts:
	// true if the socket is ready. Throws if the source database asks the worker to let go.
	bool WaitSocket(pg_conn *conn, int events, long timeout_ms = -1);
	// A hold for a drop (src/shared/lifecycle.c) is asked and the destination has not answered
	// (answered: this wait's socket was ready) for kHoldPatienceMs: the worker lets go of it.
	bool HoldOverdue(bool answered);
	// Sends what libpq holds for conn (non-blocking connection), waiting as the socket allows.
	void Flush(pg_conn *conn);
	// PQgetResult, waiting interruptibly for it.
	pg_result *NextResult(pg_conn *conn);
	// Sends a query (with text parameters) and returns its last result, or the COPY_IN one;
	// nullptr if none. The caller PQclears it.
	pg_result *Run(pg_conn *conn, const char *sql, int nparams = 0, const char *const *params = nullptr);
	void Exec(pg_conn *conn, const char *sql);
	// BEGIN (begin) and the ids of count rows, drawn from the destination's sequence in one statement.
	std::vector<int64> DrawIds(pg_conn *conn, size_t count, bool begin);
	// The statements that end a batch: the fenced progress update and COMMIT, values as literals.
	std::string Fence(pg_conn *conn, const Progress &reached, int64 forwarded);
	// Reads what has come back for the batches in flight and sends each one's fence once its COPY
	// is done and the batch before holds the progress row; never waits, never throws (a failure is
	// kept in failed_). skip: a connection whose results the caller reads itself.
	void Advance(pg_conn *skip = nullptr);
	// Throws the failure Advance found, if any.
	void RaiseFailure();

	std::string conninfo_;
	std::string source_system_id_;
	std::string database_;
	const BemiDatabase *db_;
	std::vector<pg_conn *> links_;   // the connections; nullptr: not connected
	std::vector<bool> internal_jsonb_; // per connection: its batches go through bemi._ingest
	size_t next_link_ = 0;           // the one the next batch goes to
	bool progress_known_ = false;    // LoadProgress ran since the connections were made
	std::optional<Progress> remote_; // what the destination holds for us once every batch sent commits
	int64 gaps_forwarded_ = 0;       // likewise
	TimestampTz hold_seen_at_ = 0;   // a hold was first seen asked while waiting (HoldOverdue); 0: none
	struct Sent {
		size_t link;
		std::string fence; // sent once the batch before holds the progress row
		enum class Stage {
			kCopying,   // its COPY (if any) is on its way: its result not read
			kCopied,    // waiting for the batch before to hold the progress row
			kFenceSent, // its fence and COMMIT are on their way
			kLocked,    // the fence moved the progress row: only the COMMIT's answer is left
		} stage;
		int64 rows = -1; // what bemi._ingest must answer it wrote (-1: sent by COPY, or no rows)
	};
	std::deque<Sent> in_flight_; // sent, their COMMIT's answer not read
	pg_conn *failed_conn_ = nullptr; // what Advance found: the connection and why
	std::string failed_;
	bool moved_under_ = false; // the fence found the progress row moved by another
};

// This server's system identifier, as text (pg_control_system().system_identifier).
std::string SystemIdentifier();

} // namespace bemi
