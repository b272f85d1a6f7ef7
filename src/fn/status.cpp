// status.cpp: the SQL functions that report on and wait for this database's worker. Runs in the
// caller's backend; reads the shared registry (registry.h), never the worker's own state.
#include "fn.h"

#include "bemi/guard.hpp"

#include <fmt/format.h>

extern "C" {
#include "bemi/registry.h" // C declarations, and headers (spin.h) with no extern "C" of their own
#include "access/htup_details.h"
#include "funcapi.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
}

namespace bemi {
namespace {

const char *StateName(int state) {
	switch (state) {
	case BEMI_STARTING:
		return "starting";
	case BEMI_RUNNING:
		return "running";
	case BEMI_FAILED:
		return "failed";
	case BEMI_FAILING:
		return "failing";
	case BEMI_STOPPING:
		return "stopping";
	case BEMI_PAUSED:
		return "paused";
	default:
		return "stopped";
	}
}

// A consistent copy of a registry entry, taken under its spinlock.
struct WorkerSnapshot {
	int pid;
	int state;
	XLogRecPtr applied_lsn;
	uint64 changes_written;
	uint64 skipped_table_rules, skipped_column_rules, skipped_writer_rules;
	TimestampTz last_commit_at;
	char last_error[BEMI_ERROR_LEN];
	TimestampTz last_error_at;
	int failures;
};

WorkerSnapshot Snapshot(BemiDatabase *db) {
	WorkerSnapshot s;
	SpinLockAcquire(&db->mutex);
	s.pid = db->pid;
	s.state = db->state;
	s.applied_lsn = db->applied_lsn;
	s.changes_written = db->changes_written;
	s.skipped_table_rules = db->skipped_table_rules;
	s.skipped_column_rules = db->skipped_column_rules;
	s.skipped_writer_rules = db->skipped_writer_rules;
	s.last_commit_at = db->last_commit_at;
	memcpy(s.last_error, db->last_error, sizeof s.last_error);
	s.last_error_at = db->last_error_at;
	s.failures = db->failures;
	SpinLockRelease(&db->mutex);
	s.last_error[sizeof s.last_error - 1] = '\0';
	return s;
}

XLogRecPtr AppliedLsn(BemiDatabase *db) {
	SpinLockAcquire(&db->mutex);
	XLogRecPtr applied = db->applied_lsn;
	SpinLockRelease(&db->mutex);
	return applied;
}

// Everything before the target is recorded, or this database stopped capturing. Called by
// BemiWaitFor (C) inside a PgCall: it must not throw, and does not.
bool AppliedOrStopped(BemiDatabase *db, void *arg) {
	return AppliedLsn(db) >= *static_cast<XLogRecPtr *>(arg) || db->dboid != MyDatabaseId ||
	       db->state == BEMI_UNUSED;
}

// An LSN as PostgreSQL prints it (%X/%X).
std::string Lsn(XLogRecPtr lsn) {
	return fmt::format("{:X}/{:X}", static_cast<uint32>(lsn >> 32), static_cast<uint32>(lsn));
}

// Returns once every change committed before `target` is in bemi.changes.
void WaitApplied(XLogRecPtr target, int64 timeout_ms) {
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	BemiDatabase *db = PgCall([]() { return BemiFindDatabase(MyDatabaseId); });
	if (db == nullptr)
		throw Error(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "bemi is not capturing this database", {},
		            "Check that bemi is in shared_preload_libraries and see bemi_status().");
	// No record ends inside a page header, so a target there (the insert position right after a
	// page boundary, say) means the boundary. Then flush up to it: the worker decodes flushed WAL
	// only, and asynchronous commits may not be flushed yet.
	if (target % XLOG_BLCKSZ <= SizeOfXLogLongPHD)
		target -= target % XLOG_BLCKSZ;
	bool done = PgCall([&]() {
		XLogFlush(Min(target, GetXLogInsertRecPtr()));
		return BemiWaitFor(db, AppliedOrStopped, &target, deadline, true);
	});
	if (!done) {
		WorkerSnapshot s = Snapshot(db);
		throw Error(
		    ERRCODE_QUERY_CANCELED,
		    fmt::format("bemi_wait timed out: changes up to {} are not all recorded yet", Lsn(target)),
		    fmt::format("The worker is {} and has recorded changes up to {}.{}{}", StateName(s.state),
		                Lsn(s.applied_lsn), s.last_error[0] ? " Its last error: " : "", s.last_error),
		    "See bemi_status() and the server log.");
	}
	if (AppliedLsn(db) < target)
		throw Error(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
		            "bemi stopped capturing this database while waiting");
}

// The row of bemi._worker_state(): the registry's entry, or "not running" with the slot's name.
Datum WorkerStateRow(TupleDesc row) {
	BemiDatabase *db = PgCall([]() { return BemiFindDatabase(MyDatabaseId); });
	WorkerSnapshot s{};
	if (db != nullptr)
		s = Snapshot(db);
	return PgCall([&]() {
		Datum values[12] = {};
		bool nulls[12] = {};
		char slot[NAMEDATALEN];
		BemiSlotName(MyDatabaseId, slot, sizeof(slot));
		values[2] = CStringGetTextDatum(slot);
		if (db == nullptr) {
			for (bool &n : nulls)
				n = true;
			values[1] = CStringGetTextDatum("not running");
			nulls[1] = nulls[2] = false;
		} else {
			values[0] = Int32GetDatum(s.pid);
			nulls[0] = s.pid == 0;
			values[1] = CStringGetTextDatum(StateName(s.state));
			values[3] = LSNGetDatum(s.applied_lsn);
			values[4] = Int64GetDatum(static_cast<int64>(s.changes_written));
			values[5] = TimestampTzGetDatum(s.last_commit_at);
			nulls[5] = s.last_commit_at == 0;
			values[6] = CStringGetTextDatum(s.last_error);
			nulls[6] = s.last_error[0] == '\0';
			values[7] = TimestampTzGetDatum(s.last_error_at);
			nulls[7] = s.last_error_at == 0;
			values[8] = Int32GetDatum(s.failures);
			values[9] = Int64GetDatum(static_cast<int64>(s.skipped_table_rules));
			values[10] = Int64GetDatum(static_cast<int64>(s.skipped_column_rules));
			values[11] = Int64GetDatum(static_cast<int64>(s.skipped_writer_rules));
		}
		return HeapTupleGetDatum(heap_form_tuple(row, values, nulls));
	});
}

} // namespace
} // namespace bemi

extern "C" void BemiWaitApplied(XLogRecPtr lsn, int64 timeout_ms) {
	bemi::Enter([&] { bemi::WaitApplied(lsn, timeout_ms); });
}

extern "C" Datum BemiWorkerStateRow(TupleDesc row) {
	return bemi::Enter([&] { return bemi::WorkerStateRow(row); });
}
