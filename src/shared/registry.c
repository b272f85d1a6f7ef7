/*
 * registry.c: the shared-memory table of databases that have bemi, their worker and its progress.
 * Backends read it to gate first writes and to wait; the worker writes it.
 */
#include "bemi/registry.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

BemiShared *bemi_shared = NULL;

void
BemiShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(BemiShared)));
	RequestNamedLWLockTranche("bemi", 1);
}

void
BemiShmemStartup(void)
{
	bool found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bemi_shared = ShmemInitStruct("bemi", sizeof(BemiShared), &found);
	if (!found)
	{
		memset(bemi_shared, 0, sizeof(BemiShared));
		bemi_shared->lock = &(GetNamedLWLockTranche("bemi"))->lock;
		for (int i = 0; i < BEMI_MAX_DATABASES; i++)
		{
			ConditionVariableInit(&bemi_shared->databases[i].progress_cv);
			SpinLockInit(&bemi_shared->databases[i].mutex);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The entry of a database, or NULL. Unlocked read: dboid is only set under the lock. */
BemiDatabase *
BemiFindDatabase(Oid dboid)
{
	if (bemi_shared == NULL)
		return NULL;
	for (int i = 0; i < BEMI_MAX_DATABASES; i++)
	{
		BemiDatabase *db = &bemi_shared->databases[i];

		if (db->dboid == dboid && db->state != BEMI_UNUSED)
			return db;
	}
	return NULL;
}

/* Progress and error reporting start from scratch. Caller holds the lock. */
static void
ResetProgress(BemiDatabase *db)
{
	db->applied_lsn = InvalidXLogRecPtr;
	db->changes_written = 0;
	db->skipped_table_rules = 0;
	db->skipped_column_rules = 0;
	db->skipped_writer_rules = 0;
	db->last_commit_at = 0;
	db->failures = 0;
	db->last_error[0] = '\0';
	db->last_error_at = 0;
}

/* Find or create the entry of a database; `fresh` for CREATE EXTENSION. */
BemiDatabase *
BemiAddDatabase(Oid dboid, bool fresh)
{
	BemiDatabase *found = NULL;

	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < BEMI_MAX_DATABASES && !found; i++)
		if (bemi_shared->databases[i].dboid == dboid && bemi_shared->databases[i].state != BEMI_UNUSED)
			found = &bemi_shared->databases[i];
	for (int i = 0; i < BEMI_MAX_DATABASES && !found; i++)
		if (bemi_shared->databases[i].state == BEMI_UNUSED)
		{
			found = &bemi_shared->databases[i];
			found->dboid = dboid;
			found->pid = 0;
			found->latch = NULL;
			found->fresh = false;
			found->state = BEMI_STARTING;
			found->hold_pid = 0;
			found->holding = false;
			ResetProgress(found);
		}
	if (found && fresh)
	{
		/* A new CREATE EXTENSION: nothing of an earlier install carries over. */
		found->fresh = true;
		found->state = BEMI_STARTING;
		ResetProgress(found);
	}
	LWLockRelease(bemi_shared->lock);

	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("bemi can track at most %d databases", BEMI_MAX_DATABASES),
				 errhint("Drop the extension from a database that no longer needs it.")));
	return found;
}

void
BemiSetState(BemiDatabase *db, BemiWorkerState state)
{
	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	db->state = state;
	LWLockRelease(bemi_shared->lock);
	ConditionVariableBroadcast(&db->progress_cv);
}

void
BemiReportError(BemiDatabase *db, const char *message)
{
	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	strlcpy(db->last_error, message, BEMI_ERROR_LEN);
	db->last_error_at = GetCurrentTimestamp();
	db->failures++;
	LWLockRelease(bemi_shared->lock);
	ConditionVariableBroadcast(&db->progress_cv);
}

/* The worker wrote again after a failure: `failing` becomes `running` (other states stay). */
void
BemiRecovered(BemiDatabase *db)
{
	bool changed = false;

	if (db->state != BEMI_FAILING)
		return;
	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	if (db->state == BEMI_FAILING)
	{
		db->state = BEMI_RUNNING;
		changed = true;
	}
	LWLockRelease(bemi_shared->lock);
	if (changed)
		ConditionVariableBroadcast(&db->progress_cv);
}

/* Nudge a database's worker: new WAL worth decoding, or a waiter. */
void
BemiWakeWorker(Oid dboid)
{
	BemiDatabase *db = BemiFindDatabase(dboid);
	Latch *latch = db ? db->latch : NULL;

	if (latch)
		SetLatch(latch);
}

void
BemiSlotName(Oid dboid, char *name, size_t len)
{
	snprintf(name, len, "bemi_%u", dboid);
}

bool
BemiWaitFor(BemiDatabase *db, BemiWaitCondition done, void *arg, TimestampTz deadline, bool wake_worker)
{
	bool reached = false;

	ConditionVariablePrepareToSleep(&db->progress_cv);
	for (;;)
	{
		long remaining;

		if (done(db, arg))
		{
			reached = true;
			break;
		}
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		if (wake_worker)
			BemiWakeWorker(db->dboid);
		/* Short sleeps: a broadcast missed between the check and the sleep costs 100 ms at most. */
		ConditionVariableTimedSleep(&db->progress_cv, Min(remaining, 100L), PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	return reached;
}
