/*
 * upkeep.c: the worker's periodic care of bemi.changes: partitions made ahead of time, old ones
 * dropped (ext/retention.sql does the work). A failure here is reported and retried later; it
 * never stops capture.
 */
#include "bemi/worker.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define UPKEEP_RETRY_MS 60000

static TimestampTz next_upkeep = 0;

/* Runs one round of bemi._maintain_changes() in its own transaction, when it is due. */
void
BemiUpkeep(BemiDatabase *db)
{
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner;
	volatile long next_ms = UPKEEP_RETRY_MS;

	if (GetCurrentTimestamp() < next_upkeep)
		return;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "bemi: partition upkeep");
	owner = CurrentResourceOwner;
	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		bool isnull;
		Datum next;

		SPI_connect();
		/* Runs as superuser: pg_catalog's functions named explicitly, as every worker statement. */
		if (SPI_execute("SELECT a.action, m.next_in FROM bemi._maintain_changes(pg_catalog.now()) m "
						"LEFT JOIN LATERAL pg_catalog.unnest(m.actions) a (action) ON true", false, 0) != SPI_OK_SELECT ||
			SPI_processed < 1)
			elog(ERROR, "bemi: partition upkeep returned nothing");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			char *action = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

			if (action)
				ereport(LOG, (errmsg("bemi: %s", action)));
		}
		next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		if (!isnull)
		{
			Interval *span = DatumGetIntervalP(next);

			next_ms = (long) (span->time / 1000) + (long) span->day * 86400000L;
		}
		SPI_finish();
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData *error;

		MemoryContextSwitchTo(caller);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(WARNING, (errmsg("bemi: partition upkeep failed: %s", error->message),
						  errdetail("Capture goes on; upkeep is tried again in a minute.")));
		BemiReportError(db, psprintf("partition upkeep: %s", error->message));
		FreeErrorData(error);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	CurrentResourceOwner = owner;
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller);
	pgstat_report_activity(STATE_IDLE, NULL);
	next_upkeep = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(next_ms, 1000));
}
