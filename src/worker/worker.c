/*
 * worker.c: one background worker per database that has bemi.
 *
 * It owns the database's slot, decodes in-process with the bemi plugin into its sink, writes
 * batches to bemi.changes with its progress, and confirms the slot only up to what is committed.
 * Errors end the process; the postmaster starts it again and it resumes from bemi.progress.
 */
#include "bemi/worker.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogreader.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/decode.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define WORKER_NAPTIME_MS 1000
#define MAX_BACKOFF_S 60

static BemiDatabase *my_db = NULL;
static MemoryContext worker_context = NULL; /* long-lived; transactions leave TopMemoryContext current */

/* Clears our claim on the entry however the process ends. */
static void
ReleaseClaim(int code, Datum arg)
{
	if (my_db == NULL)
		return;
	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	if (my_db->pid == MyProcPid)
	{
		my_db->pid = 0;
		my_db->latch = NULL;
	}
	LWLockRelease(bemi_shared->lock);
	ConditionVariableBroadcast(&my_db->progress_cv);
}

/* One worker per database: a second one (after a crash restart, say) leaves quietly. */
static BemiDatabase *
Claim(Oid dboid)
{
	BemiDatabase *db = BemiAddDatabase(dboid, false);
	bool taken;

	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	taken = db->pid != 0 && db->pid != MyProcPid && kill(db->pid, 0) == 0;
	if (!taken)
	{
		db->pid = MyProcPid;
		db->latch = MyLatch;
	}
	LWLockRelease(bemi_shared->lock);
	if (taken)
		proc_exit(0);
	my_db = db;
	before_shmem_exit(ReleaseClaim, (Datum) 0);
	return db;
}

/*
 * After a failure, wait before trying again: 1 s, 2 s, 4 s ... up to a minute. Writers set our
 * latch at every commit, so the wait runs to its deadline whatever wakes us; only a shutdown
 * (CHECK_FOR_INTERRUPTS), postmaster death, DROP DATABASE, DROP EXTENSION or a new CREATE
 * EXTENSION cut it short.
 */
static void
Backoff(BemiDatabase *db)
{
	int failures = db->failures;
	TimestampTz deadline;

	if (failures <= 0 || db->fresh)
		return;
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   1000L * Min(1L << Min(failures - 1, 10), MAX_BACKOFF_S));
	pgstat_report_activity(STATE_IDLE, "bemi: waiting to retry after an error");
	for (;;)
	{
		long remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		CHECK_FOR_INTERRUPTS();
		if (db->state == BEMI_PAUSED)
		{
			/* DROP DATABASE waits for our connection to go; we hold no slot yet. */
			ereport(LOG, (errmsg("bemi: worker for database %u exiting for DROP DATABASE", db->dboid)));
			proc_exit(0);
		}
		if (remaining <= 0 || db->state == BEMI_STOPPING || db->fresh)
			break; /* DROP EXTENSION, or a new CREATE EXTENSION waiting for its slot */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, Min(remaining, 1000L),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

static bool
ExtensionInstalled(void)
{
	bool installed;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	installed = OidIsValid(get_extension_oid("bemi", true));
	CommitTransactionCommand();
	return installed;
}

/* Our commits carry a replication origin: the plugin skips them, so we never capture ourselves. */
static void
SetupOrigin(Oid dboid)
{
	char name[NAMEDATALEN];
	RepOriginId origin;

	BemiSlotName(dboid, name, sizeof(name));
	StartTransactionCommand();
	origin = replorigin_by_name(name, true);
	if (origin == InvalidRepOriginId)
		origin = replorigin_create(name);
	CommitTransactionCommand();
#if PG_VERSION_NUM >= 160000
	replorigin_session_setup(origin, 0);
#else
	replorigin_session_setup(origin);
#endif
	replorigin_session_origin = origin;
	bemi_worker_origin = origin;
}

/* DROP EXTENSION (or a database without it): drop slot and origin, free the entry, exit. */
static void
Retire(BemiDatabase *db, LogicalDecodingContext *ctx, const char *slot)
{
	char origin[NAMEDATALEN];

	pgstat_report_activity(STATE_RUNNING, "bemi: dropping capture slot");
	if (ctx)
		BemiStopDecoding(ctx);
	BemiSinkStop();
	BemiDropSlot(slot);
	if (replorigin_session_origin != InvalidRepOriginId)
	{
		replorigin_session_reset();
		replorigin_session_origin = InvalidRepOriginId;
	}
	BemiSlotName(db->dboid, origin, sizeof(origin));
	StartTransactionCommand();
	replorigin_drop_by_name(origin, true, false);
	CommitTransactionCommand();
	ereport(LOG, (errmsg("bemi: capture stopped for database %u; slot \"%s\" dropped", db->dboid, slot)));

	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	db->pid = 0;
	db->latch = NULL;
	db->fresh = false;
	db->state = BEMI_UNUSED;
	LWLockRelease(bemi_shared->lock);
	ConditionVariableBroadcast(&db->progress_cv);
	my_db = NULL;
	proc_exit(0);
}

/* DROP DATABASE: release the slot and the connection; the backend dropping it takes over. */
static void
LetGo(BemiDatabase *db, LogicalDecodingContext *ctx)
{
	BemiStopDecoding(ctx);
	BemiSinkStop();
	ereport(LOG, (errmsg("bemi: worker for database %u exiting for DROP DATABASE", db->dboid)));
	proc_exit(0);
}

/*
 * The worker commits asynchronously (no WAL flush of its own per batch), so the slot may only be
 * confirmed up to `confirm_lsn` once the WAL holding our last commit, `commit_end`, is flushed.
 * A crash before that loses the batch and its progress together; decoding resumes before both.
 * From 17 the same holds for the standbys named in synchronized_standby_slots.
 */
static XLogRecPtr confirm_lsn = InvalidXLogRecPtr;
static XLogRecPtr commit_end = InvalidXLogRecPtr;

static void
ConfirmDurable(bool flush_now)
{
	if (confirm_lsn <= MyReplicationSlot->data.confirmed_flush)
		return;
	if (flush_now)
		XLogFlush(commit_end);
	if (GetFlushRecPtr(NULL) < commit_end)
		return;
#if PG_VERSION_NUM >= 170000
	/*
	 * Failover: a standby syncs the slot's position only, so the slot may not pass what the
	 * standbys of synchronized_standby_slots have of our trail (true when none are set).
	 */
	if (!StandbySlotsHaveCaughtup(commit_end, DEBUG1))
		return;
#endif
	LogicalConfirmReceivedLocation(confirm_lsn);
}

/* Everything decoded so far is written: tell the waiters, confirm the slot once durable. */
static void
Flush(BemiDatabase *db, LogicalDecodingContext *ctx)
{
	XLogRecPtr reached = ctx->reader->EndRecPtr;

	if (BemiSinkPending())
	{
		BemiSinkDrain(db);
		commit_end = XactLastCommitEnd;
	}
	BemiRecovered(db);
	confirm_lsn = reached;
	ConfirmDurable(false);
	if (reached > db->applied_lsn)
	{
		SpinLockAcquire(&db->mutex);
		db->applied_lsn = reached;
		SpinLockRelease(&db->mutex);
		ConditionVariableBroadcast(&db->progress_cv);
	}
}

static void
Stream(BemiDatabase *db, LogicalDecodingContext *ctx, const char *slot)
{
	MemoryContext loop_context = CurrentMemoryContext;
	TimestampTz pending_since = 0;

	for (;;)
	{
		XLogRecPtr end_of_wal;

		/* Transactions of the sink leave us in TopMemoryContext: come back every round. */
		MemoryContextSwitchTo(loop_context);

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (db->state == BEMI_STOPPING)
			Retire(db, ctx, slot);
		if (db->state == BEMI_PAUSED)
			LetGo(db, ctx);

		end_of_wal = GetFlushRecPtr(NULL);
		if (ctx->reader->EndRecPtr < end_of_wal)
			pgstat_report_activity(STATE_RUNNING, "bemi: decoding");
		while (ctx->reader->EndRecPtr < end_of_wal && (db->state == BEMI_RUNNING || db->state == BEMI_FAILING))
		{
			char *errm = NULL;
			XLogRecord *record = XLogReadRecord(ctx->reader, &errm);

			if (errm)
				elog(ERROR, "bemi: could not read WAL at %X/%X: %s",
					 LSN_FORMAT_ARGS(ctx->reader->EndRecPtr), errm);
			if (record)
				LogicalDecodingProcessRecord(ctx, ctx->reader);
			if (BemiSinkPendingChanges() >= bemi_batch_size)
			{
				Flush(db, ctx);
				MemoryContextSwitchTo(loop_context);
			}
			CHECK_FOR_INTERRUPTS();
		}

		/*
		 * Under a steady load each wake-up finds a transaction or two: let changes gather for
		 * bemi.flush_delay so that the worker writes batches, not one transaction per commit.
		 */
		if (BemiSinkPending() && BemiSinkPendingChanges() < bemi_batch_size && bemi_flush_delay_ms > 0)
		{
			long remaining;

			if (pending_since == 0)
				pending_since = GetCurrentTimestamp();
			remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
														TimestampTzPlusMilliseconds(pending_since, bemi_flush_delay_ms));
			if (remaining > 0)
			{
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, remaining,
								 PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				continue;
			}
		}
		Flush(db, ctx);
		pending_since = 0;
		BemiUpkeep(db);

		if (ctx->reader->EndRecPtr >= GetFlushRecPtr(NULL))
		{
			ConfirmDurable(true); /* idle: make our last batch durable and confirm it */
			pgstat_report_activity(STATE_IDLE, NULL);
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 WORKER_NAPTIME_MS, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

/*
 * A slot that is missing (a failover to a standby, someone dropped it) or that PostgreSQL
 * invalidated (max_slot_wal_keep_size exceeded) means changes were lost. Capture goes on with a
 * new slot, and the loss is recorded in bemi.gaps, bemi_status() and the log.
 */
static void
RecreateLostSlot(BemiDatabase *db, const char *slot)
{
	bool exists = BemiSlotExists(slot);
	XLogRecPtr lost_from = exists ? BemiSlotLostFrom(slot) : InvalidXLogRecPtr;
	const char *reason;

	if (exists && XLogRecPtrIsInvalid(lost_from))
		return;
	reason = exists ? "the capture slot was invalidated (max_slot_wal_keep_size exceeded)"
					: "the capture slot was missing (dropped, or the server was promoted from a standby)";
	ereport(WARNING,
			(errmsg("bemi: %s; changes since %X/%X are lost", reason, LSN_FORMAT_ARGS(lost_from)),
			 errdetail("A new capture slot is created; the gap is recorded in bemi.gaps."),
			 errhint("Raise max_slot_wal_keep_size, and watch bemi_status().")));
	BemiReportError(db, reason);
	if (exists)
		BemiDropSlot(slot);
	StartTransactionCommand();
	BemiCreateSlot(slot);
	CommitTransactionCommand();
	BemiRecordGap(lost_from, reason);
}

static void
Run(BemiDatabase *db)
{
	char slot[NAMEDATALEN];
	BemiProgress progress;
	LogicalDecodingContext *ctx;

	BemiSlotName(db->dboid, slot, sizeof(slot));
	if (db->fresh)
	{
		/* CREATE EXTENSION is still open: this waits for it, then every later write is decoded. */
		pgstat_report_activity(STATE_RUNNING, "bemi: creating capture slot");
		if (BemiSlotExists(slot))
			BemiDropSlot(slot);
		StartTransactionCommand();
		BemiCreateSlot(slot);
		CommitTransactionCommand();
		LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
		db->fresh = false;
		LWLockRelease(bemi_shared->lock);
		ereport(LOG, (errmsg("bemi: capture slot \"%s\" created for database %u", slot, db->dboid)));
	}
	if (!ExtensionInstalled())
		Retire(db, NULL, slot);
	RecreateLostSlot(db, slot);
	/* A worker restarted after a failure stays `failing` until it writes a batch (BemiRecovered). */
	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	if (db->state == BEMI_STARTING || db->state == BEMI_FAILED)
		db->state = BEMI_RUNNING;
	LWLockRelease(bemi_shared->lock);
	ConditionVariableBroadcast(&db->progress_cv);

	MemoryContextSwitchTo(worker_context);
	SetupOrigin(db->dboid);
	progress = BemiLoadProgress();
	BemiSinkStart(db->dboid, &progress);
	MemoryContextSwitchTo(worker_context);
	ctx = BemiStartDecoding(slot);
	ereport(LOG, (errmsg("bemi: worker decoding database %u from %X/%X (written up to %X/%X)", db->dboid,
						 LSN_FORMAT_ARGS(MyReplicationSlot->data.confirmed_flush),
						 LSN_FORMAT_ARGS(progress.txn_end_lsn))));
	Stream(db, ctx, slot);
}

void
bemi_worker_main(Datum arg)
{
	Oid dboid = DatumGetObjectId(arg);
	BemiDatabase *db;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	bemi_is_worker = true;
	pgstat_report_appname("bemi worker");
	SetConfigOption("application_name", "bemi worker", PGC_USERSET, PGC_S_OVERRIDE);
	/* Batches commit without waiting for a WAL flush: see ConfirmDurable(). */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* Images must not depend on server defaults: times in UTC, ISO styles. */
	SetConfigOption("TimeZone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("DateStyle", "ISO, YMD", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("IntervalStyle", "postgres", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("extra_float_digits", "1", PGC_SUSET, PGC_S_OVERRIDE);
	/*
	 * The worker runs as the bootstrap superuser: its statements must never resolve a name in a
	 * schema that others can create in (a look-alike public.unnest would run as superuser). Every
	 * statement also qualifies what it calls; this is the second lock.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	worker_context = AllocSetContextCreate(TopMemoryContext, "bemi worker", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(worker_context);
	db = Claim(dboid);
	Backoff(db);

	PG_TRY();
	{
		Run(db);
	}
	PG_CATCH();
	{
		ErrorData *error;

		MemoryContextSwitchTo(worker_context);
		error = CopyErrorData();
		BemiReportError(db, error->message);
		LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
		if (db->state == BEMI_STARTING)
			db->state = BEMI_FAILED;
		else if (db->state == BEMI_RUNNING)
			db->state = BEMI_FAILING;
		LWLockRelease(bemi_shared->lock);
		ConditionVariableBroadcast(&db->progress_cv);
		PG_RE_THROW();
	}
	PG_END_TRY();
}
