// remote.hpp: the trail in another database (issue 16). A RemoteDestination writes the worker's
// batches into bemi.changes of another PostgreSQL over libpq, with the source's progress in that
// database's bemi.source_progress in the same transaction (remote.cpp). Worker code, and the
// connection-string check that bemi_set_destination shares (src/fn/destination.cpp).
#pragma once

#include "sink.hpp"

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
// asks the worker to let go (the connection is closed, the batch in flight rolled back there): the
// worker then lets go as it would between batches.
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

class RemoteDestination {
  public:
	// source_system_id, database: how this source's changes and progress are named there. db: the
	// source database's entry, whose DROP DATABASE or DROP EXTENSION ends any wait for the destination.
	RemoteDestination(std::string conninfo, std::string source_system_id, std::string database, const BemiDatabase *db);
	RemoteDestination(const RemoteDestination &) = delete;
	RemoteDestination &operator=(const RemoteDestination &) = delete;
	~RemoteDestination();

	// The destination's progress for this source (connecting first); nullopt when it has none.
	// Remembered: each batch's progress update checks that nobody moved it meanwhile.
	std::optional<Progress> LoadProgress();
	// One transaction there, sent without waiting for its end: the progress check and update,
	// the source's new gaps, the batch's rows by COPY, COMMIT with synchronous_commit = on. The
	// rows are turned into COPY's binary format a few hundred at a time while the destination already
	// parses and inserts the ones before; the COMMIT is on its way when Send returns, and the
	// worker decodes the next batch while the destination finishes this one. Settle() before
	// anything counts it as written. Throws on failure (the connection is then dropped and made
	// again next time). empty_context: the jsonb of a change without context.
	void Send(const Batch &batch, const std::vector<char> &empty_context, const Progress &reached,
	          const std::vector<Gap> &gaps);
	// A batch was sent and its COMMIT's answer not yet read.
	bool InFlight() const { return in_flight_.has_value(); }
	// Waits for the batch in flight: returns once the destination has it durably, throws
	// otherwise. Nothing in flight: returns at once.
	void Settle();
	// The last of this source's gaps the destination holds (bemi.source_progress.gaps_forwarded).
	int64 GapsForwarded() const { return gaps_forwarded_; }

  private:
	// Rows first .. first + count - 1 of a batch in COPY's binary format, in the column order of
	// Send's COPY (with the format's header before the first row, its trailer after the last).
	std::string CopyData(const Batch &batch, size_t first, size_t count, const std::vector<char> &empty_context) const;
	void Connect();
	void Disconnect();
	[[noreturn]] void Fail(const std::string &what);
	// Waits for the socket (WL_SOCKET_* events) or timeout_ms (-1: none), serving interrupts:
	// true if the socket is ready. Throws if the source database asks the worker to let go.
	bool WaitSocket(int events, long timeout_ms = -1);
	// Sends what libpq holds (non-blocking connection), waiting as the socket allows.
	void Flush();
	// PQgetResult, waiting interruptibly for it.
	pg_result *NextResult();
	// Sends a query (with text parameters) and returns its last result, or the COPY_IN one;
	// nullptr if none. The caller PQclears it.
	pg_result *Run(const char *sql, int nparams = 0, const char *const *params = nullptr);
	void Exec(const char *sql);

	std::string conninfo_;
	std::string source_system_id_;
	std::string database_;
	const BemiDatabase *db_;
	pg_conn *conn_ = nullptr;
	bool progress_known_ = false;    // LoadProgress ran on this connection's destination
	std::optional<Progress> remote_; // what the destination holds for us, as last read or settled
	int64 gaps_forwarded_ = 0;
	struct Sent {
		Progress reached;
		int64 gaps_forwarded;
	};
	std::optional<Sent> in_flight_; // sent, its COMMIT's answer not read
};

// This server's system identifier, as text (pg_control_system().system_identifier).
std::string SystemIdentifier();

} // namespace bemi
