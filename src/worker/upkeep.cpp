// upkeep.cpp: the worker's periodic care of bemi.changes: partitions made ahead of time, old ones
// dropped (ext/retention.sql does the work). Runs in the worker between batches. A failure here
// is reported and retried later; it never stops capture. One PgCall per round.
#include "upkeep.hpp"

#include "transaction.hpp"

extern "C" {
#include "pgstat.h"
#include "utils/datetime.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
}

namespace bemi {

namespace {

constexpr long kRetryMs = 60000;

// One round of bemi._maintain_changes(); how long until the next. Inside a subtransaction, with
// SPI connected, inside PgCall.
long MaintainChanges() {
	long next_ms = kRetryMs;
	bool isnull;

	// Runs as superuser: pg_catalog's functions named explicitly, as every worker statement.
	if (SPI_execute("SELECT a.action, m.next_in FROM bemi._maintain_changes(pg_catalog.now()) m "
	                "LEFT JOIN LATERAL pg_catalog.unnest(m.actions) a (action) ON true",
	                false, 0) != SPI_OK_SELECT ||
	    SPI_processed < 1)
		elog(ERROR, "bemi: partition upkeep returned nothing");
	for (uint64 i = 0; i < SPI_processed; i++) {
		char *action = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		if (action)
			ereport(LOG, (errmsg("bemi: %s", action)));
	}
	Datum next = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull) {
		Interval *span = DatumGetIntervalP(next);

		next_ms = static_cast<long>(span->time / 1000) + static_cast<long>(span->day) * 86400000L;
	}
	return next_ms;
}

} // namespace

void Upkeep::RunIfDue(BemiDatabase *db) {
	PgCall([&]() {
		if (GetCurrentTimestamp() < next_)
			return;
		long next_ms = kRetryMs;
		InTransactionWithSpi([&]() {
			struct Round {
				long next_ms;
			} round{kRetryMs};
			MemoryContext caller = CurrentMemoryContext;
			ResourceOwner owner = CurrentResourceOwner;

			pgstat_report_activity(STATE_RUNNING, "bemi: partition upkeep");
			BeginInternalSubTransaction(nullptr);
			MemoryContextSwitchTo(caller); // an error is copied into the caller's context
			ErrorData *error = PgTryCall(
			    [](void *p) {
				    static_cast<Round *>(p)->next_ms = MaintainChanges();
				    ReleaseCurrentSubTransaction();
			    },
			    &round);
			if (error != nullptr) {
				RollbackAndReleaseCurrentSubTransaction();
				MemoryContextSwitchTo(caller);
				CurrentResourceOwner = owner;
				ereport(WARNING, (errmsg("bemi: partition upkeep failed: %s", error->message),
				                  errdetail("Capture goes on; upkeep is tried again in a minute.")));
				BemiReportError(db, psprintf("partition upkeep: %s", error->message));
				FreeErrorData(error);
			} else
				next_ms = round.next_ms;
			MemoryContextSwitchTo(caller);
			CurrentResourceOwner = owner;
		});
		pgstat_report_activity(STATE_IDLE, nullptr);
		next_ = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(next_ms, 1000));
	});
}

} // namespace bemi
