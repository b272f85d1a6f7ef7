/*
 * status.c: SQL functions that report on and wait for the worker.
 */
#include "bemi/registry.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(bemi_wait);
PG_FUNCTION_INFO_V1(bemi_worker_state);

static const char *
StateName(int state)
{
	switch (state)
	{
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

static BemiDatabase *
CapturingDatabaseOrError(void)
{
	BemiDatabase *db = BemiFindDatabase(MyDatabaseId);

	if (db == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bemi is not capturing this database"),
				 errhint("Check that bemi is in shared_preload_libraries and see bemi_status().")));
	return db;
}

static XLogRecPtr
AppliedLsn(BemiDatabase *db)
{
	XLogRecPtr applied;

	SpinLockAcquire(&db->mutex);
	applied = db->applied_lsn;
	SpinLockRelease(&db->mutex);
	return applied;
}

/* Everything before the target is recorded, or this database stopped capturing. */
static bool
AppliedOrStopped(BemiDatabase *db, void *arg)
{
	return AppliedLsn(db) >= *(XLogRecPtr *) arg || db->dboid != MyDatabaseId || db->state == BEMI_UNUSED;
}

/* Returns once every change committed before `lsn` is in bemi.changes. */
Datum
bemi_wait(PG_FUNCTION_ARGS)
{
	XLogRecPtr target = PG_GETARG_LSN(0);
	Interval *timeout = PG_GETARG_INTERVAL_P(1);
	int64 timeout_ms = (timeout->time + (int64) (timeout->day) * USECS_PER_DAY +
						(int64) timeout->month * DAYS_PER_MONTH * USECS_PER_DAY) / 1000;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	BemiDatabase *db = CapturingDatabaseOrError();

	/*
	 * No record ends inside a page header, so a target there (the insert position right after a
	 * page boundary, say) means the boundary. Then flush up to it: the worker decodes flushed WAL
	 * only, and asynchronous commits may not be flushed yet.
	 */
	if (target % XLOG_BLCKSZ <= SizeOfXLogLongPHD)
		target -= target % XLOG_BLCKSZ;
	XLogFlush(Min(target, GetXLogInsertRecPtr()));
	if (!BemiWaitFor(db, AppliedOrStopped, &target, deadline, true))
	{
		XLogRecPtr applied = AppliedLsn(db);

		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("bemi_wait timed out: changes up to %X/%X are not all recorded yet",
						LSN_FORMAT_ARGS(target)),
				 errdetail("The worker is %s and has recorded changes up to %X/%X.%s%s",
						   StateName(db->state), LSN_FORMAT_ARGS(applied),
						   db->last_error[0] ? " Its last error: " : "", db->last_error),
				 errhint("See bemi_status() and the server log.")));
	}
	if (AppliedLsn(db) < target)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bemi stopped capturing this database while waiting")));
	PG_RETURN_BOOL(true);
}

/* The shared-memory view of this database's worker, for bemi_status(). */
Datum
bemi_worker_state(PG_FUNCTION_ARGS)
{
	TupleDesc desc;
	Datum values[9];
	bool nulls[9] = {false};
	BemiDatabase *db = BemiFindDatabase(MyDatabaseId);
	char slot[NAMEDATALEN];

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	BemiSlotName(MyDatabaseId, slot, sizeof(slot));
	if (db == NULL)
	{
		for (int i = 0; i < 9; i++)
			nulls[i] = true;
		values[1] = CStringGetTextDatum("not running");
		nulls[1] = false;
		values[2] = CStringGetTextDatum(slot);
		nulls[2] = false;
	}
	else
	{
		SpinLockAcquire(&db->mutex);
		values[0] = Int32GetDatum(db->pid);
		nulls[0] = db->pid == 0;
		values[1] = CStringGetTextDatum(StateName(db->state));
		values[2] = CStringGetTextDatum(slot);
		values[3] = LSNGetDatum(db->applied_lsn);
		values[4] = Int64GetDatum((int64) db->changes_written);
		values[5] = TimestampTzGetDatum(db->last_commit_at);
		nulls[5] = db->last_commit_at == 0;
		values[6] = CStringGetTextDatum(db->last_error);
		nulls[6] = db->last_error[0] == '\0';
		values[7] = TimestampTzGetDatum(db->last_error_at);
		nulls[7] = db->last_error_at == 0;
		values[8] = Int32GetDatum(db->failures);
		SpinLockRelease(&db->mutex);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
