// worker.cpp: one background worker per database that has bemi (entered from worker_shim.c).
//
// It owns the database's slot, decodes in-process with the bemi plugin into its sink, writes
// batches to bemi.changes with its progress, and confirms the slot only up to what is committed.
// Errors end the process; the postmaster starts it again and it resumes from bemi.progress.
//
// Crossings: BemiWorkerRun enters C++ through bemi::Enter. Every PostgreSQL call below is inside
// a PgCall: one per step (a round of decoding up to a full batch, a flush, a wait), never one per
// WAL record. Decoding calls the plugin, which feeds the Sink through sink.h's functions, each
// entered through the guard again (sink.cpp).
#include "remote.hpp"
#include "sink.hpp"
#include "transaction.hpp"
#include "upkeep.hpp"
#include "writers.hpp"

#include <deque>
#include <memory>
#include <string>
#include <utility>

extern "C" {
#include "bemi/lifecycle.h"
#include "bemi/worker.h"
#include "bemi/snapshot.h"
#include "access/xlog.h"
#include "access/xlogreader.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "catalog/pg_type.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/decode.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"
}

namespace bemi {

// The connection and the settings every statement and image of the worker and its writers
// depend on.
// C-style, inside PgCall only.
void Connect(Oid dboid, const char *name) {
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	bemi_is_worker = true;
	pgstat_report_appname(name);
	SetConfigOption("application_name", name, PGC_USERSET, PGC_S_OVERRIDE);
	// Batches commit without waiting for a WAL flush: see DatabaseRun::ConfirmDurable().
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	// Images must not depend on server defaults: times in UTC, ISO styles.
	SetConfigOption("TimeZone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("DateStyle", "ISO, YMD", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("IntervalStyle", "postgres", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("extra_float_digits", "1", PGC_SUSET, PGC_S_OVERRIDE);
	// The worker runs as the bootstrap superuser: its statements must never resolve a name in a
	// schema that others can create in (a look-alike public.unnest would run as superuser). Every
	// statement also qualifies what it calls; this is the second lock.
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
}

namespace {

constexpr long kNaptimeMs = 1000;
constexpr long kGatherMs = 20; // longest sleep while a batch gathers (see Loop)
constexpr int kStatsFlushMs = 1000; // idle: statistics flushed at most this often
constexpr long kMaxBackoffS = 60;
// Writers start with a backlog and leave after this long without one: an idle database holds
// no worker slots but its worker's. After a failed start (no free slot), this long before trying again.
constexpr int kWritersIdleMs = 10000;
constexpr int kWritersRetryMs = 60000;

BemiDatabase *claimed = nullptr;

// Clears our claim on the entry however the process ends (a PostgreSQL exit callback: plain C).
void ReleaseClaim(int code, Datum arg) {
	if (claimed == nullptr)
		return;
	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	if (claimed->pid == MyProcPid) {
		claimed->pid = 0;
		claimed->latch = nullptr;
	}
	LWLockRelease(bemi_shared->lock);
	ConditionVariableBroadcast(&claimed->progress_cv);
}

// One worker per database: a second one (after a crash restart, say) leaves quietly.
// C-style, inside PgCall only.
BemiDatabase *Claim(Oid dboid) {
	BemiDatabase *db = BemiAddDatabase(dboid, false);

	LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
	bool taken = db->pid != 0 && db->pid != MyProcPid && kill(db->pid, 0) == 0;
	// DROP DATABASE asked the worker to let go while this one was still starting (it saw no pid
	// and did not wait): leave before taking the slot, which would make the drop fail.
	bool paused = db->state == BEMI_PAUSED;
	if (!taken && !paused) {
		db->pid = MyProcPid;
		db->latch = MyLatch;
	}
	LWLockRelease(bemi_shared->lock);
	if (paused && !taken)
		ereport(LOG, (errmsg("bemi: worker for database %u exiting for DROP DATABASE", dboid)));
	if (taken || paused)
		proc_exit(0);
	claimed = db;
	before_shmem_exit(ReleaseClaim, Datum(0));
	return db;
}

// After a failure, wait before trying again: 1 s, 2 s, 4 s ... up to a minute. Writers set our
// latch at every commit, so the wait runs to its deadline whatever wakes us; only a shutdown
// (CHECK_FOR_INTERRUPTS), postmaster death, DROP DATABASE, DROP EXTENSION or a new CREATE
// EXTENSION cut it short. C-style, inside PgCall only.
void Backoff(BemiDatabase *db) {
	int failures = db->failures;

	if (failures <= 0 || db->fresh)
		return;
	TimestampTz deadline = TimestampTzPlusMilliseconds(
	    GetCurrentTimestamp(), 1000L * Min(1L << Min(failures - 1, 10), kMaxBackoffS));
	pgstat_report_activity(STATE_IDLE, "bemi: waiting to retry after an error");
	for (;;) {
		long remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

		CHECK_FOR_INTERRUPTS();
		if (db->state == BEMI_PAUSED) {
			// DROP DATABASE waits for our connection to go; we hold no slot yet.
			ereport(LOG, (errmsg("bemi: worker for database %u exiting for DROP DATABASE", db->dboid)));
			proc_exit(0);
		}
		if (remaining <= 0 || db->state == BEMI_STOPPING || db->fresh)
			break; // DROP EXTENSION, or a new CREATE EXTENSION waiting for its slot
		BemiAckHold(db); // a drop may go ahead: we hold nothing (the run holds still before a batch)
		(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, Min(remaining, 1000L),
		                PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

// The run failed: say so in bemi_status() before the error ends the process.
void MarkFailed(BemiDatabase *db, const char *message) {
	PgCall([&]() {
		BemiReportError(db, message);
		LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
		if (db->state == BEMI_STARTING)
			db->state = BEMI_FAILED;
		else if (db->state == BEMI_RUNNING)
			db->state = BEMI_FAILING;
		LWLockRelease(bemi_shared->lock);
		ConditionVariableBroadcast(&db->progress_cv);
	});
}

// One run of a database's worker: from its slot to the stream loop, which ends only with the
// process (an error, a shutdown, DROP EXTENSION, DROP DATABASE).
class DatabaseRun {
  public:
	DatabaseRun(BemiDatabase *db, MemoryContext context) : db_(db), context_(context) {
		BemiSlotName(db->dboid, slot_, sizeof(slot_));
	}
	[[noreturn]] void Run();

  private:
	void Start();
	void RecreateLostSlot();
	[[noreturn]] void Stream(const std::string &conninfo);
	[[noreturn]] void Loop();
	bool Decode(XLogRecPtr end_of_wal);
	void Flush();
	void Advance();
	void ConfirmDurable(bool flush_now);
	void Applied(XLogRecPtr reached);
	void StartWriters();
	void StopIdleWriters();
	bool HoldForDrop();
	void LandInFlight();
	[[noreturn]] void Retire();
	[[noreturn]] void LetGo();
	[[noreturn]] void NewDestination();

	BemiDatabase *db_;
	MemoryContext context_; // long-lived; transactions leave TopMemoryContext current
	TimestampTz stats_flushed_at_ = 0;
	char slot_[NAMEDATALEN];
	LogicalDecodingContext *ctx_ = nullptr;
	std::unique_ptr<Sink> sink_;
	std::unique_ptr<Writers> writers_; // none: the worker writes its batches itself
	int writers_wanted_ = 0;            // bemi.writers, or 0 with a destination
	TimestampTz writers_retry_at_ = 0;  // after a start that got no writer
	// Batches handed to the writers: (the last batch sent, the WAL position decoded when it was
	// sent). A position counts as applied once that batch is committed.
	std::deque<std::pair<uint64, XLogRecPtr>> in_flight_;
	Upkeep upkeep_;
	// The worker commits asynchronously (no WAL flush of its own per batch), so the slot may only
	// be confirmed up to confirm_lsn_ once the WAL holding our last commit, commit_end_, is flushed.
	XLogRecPtr confirm_lsn_ = InvalidXLogRecPtr;
	XLogRecPtr commit_end_ = InvalidXLogRecPtr;
	uint32 destination_generation_ = 0; // of the destination this run writes to
	bool switching_ = false;            // a new one is set: decoding is capped at its commit
};

// Slot, origin, progress and decoding context; then the stream.
void DatabaseRun::Run() {
	Start();
	RecreateLostSlot();
	// The slot is consistent: every snapshot chunk committed from now on is decoded.
	PgCall([&]() { BemiResumeSnapshots(db_->dboid); });
	WaitForOldWriters(db_); // none of the last run's may commit after we read the progress
	Progress progress = LoadProgress();
	sink_ = StartSink(db_->dboid, progress);
	// Read before the destination: a bemi_set_destination committing after this moves it again.
	destination_generation_ = PgCall([&]() {
		SpinLockAcquire(&db_->mutex);
		uint32 generation = db_->destination_generation;
		SpinLockRelease(&db_->mutex);
		return generation;
	});
	std::string conninfo = LoadDestination();
	try {
		Stream(conninfo); // never returns
	} catch (const LetGoRequested &) {
	}
	// A wait for the destination ended by DROP DATABASE or DROP EXTENSION (remote.cpp): let go
	// here, outside the handler, as the stream loop does between batches.
	PgCall([&]() {
		AbortOutOfAnyTransaction();
		ereport(LOG, (errmsg("bemi: worker for database %u stopped waiting for its destination", db_->dboid)));
	});
	// Or a statement that may drop the extension asked the worker to hold still: with nothing in
	// flight any more (rolled back there), it holds still here. Then it retires if the extension
	// went, else starts again, a second later, from the destination's progress.
	if (db_->state != BEMI_STOPPING && db_->state != BEMI_PAUSED && PgCall([&]() { return BemiHoldRequested(db_); })) {
		PgCall([&]() { BemiHoldStill(db_); });
		if (db_->state != BEMI_STOPPING && db_->state != BEMI_PAUSED)
			PgCall([&]() {
				ereport(LOG, (errmsg("bemi: worker for database %u held still for a statement that kept the extension; it starts again",
				                     db_->dboid)));
				proc_exit(1);
			});
	}
	if (db_->state == BEMI_STOPPING)
		Retire();
	LetGo();
}

// Writers or the destination, the decoding context, then the loop.
void DatabaseRun::Stream(const std::string &conninfo) {
	int writers = PgCall([]() { return bemi_writers; });
	if (!conninfo.empty()) {
		// Writer processes write here only: with a destination the worker writes each batch there
		// itself (the destination's COMMIT is the wait, not this server's CPU).
		sink_->UseDestination(db_, conninfo);
		writers = 0;
	} else
		PgCall([&]() {
			SpinLockAcquire(&db_->mutex);
			db_->destination_reachable = 0;
			SpinLockRelease(&db_->mutex);
		});
	writers_wanted_ = writers; // started by the first backlog (StartWriters)
	PgCall([&]() {
		MemoryContextSwitchTo(context_);
		ctx_ = BemiStartDecoding(slot_);
		ereport(LOG, (errmsg("bemi: worker decoding database %u from %X/%X (written up to %X/%X), up to %d writers%s",
		                     db_->dboid, BEMI_LSN_ARGS(MyReplicationSlot->data.confirmed_flush),
		                     BEMI_LSN_ARGS(sink_->Done().txn_end_lsn), writers_wanted_,
		                     conninfo.empty() ? "" : ", the trail in another database")));
	});
	Loop();
}

void DatabaseRun::Start() {
	bool installed = PgCall([&]() {
		if (db_->fresh) {
			// CREATE EXTENSION is still open: this waits for it, then every later write is decoded.
			pgstat_report_activity(STATE_RUNNING, "bemi: creating capture slot");
			if (BemiSlotExists(slot_))
				BemiDropSlot(slot_);
			InTransaction([&]() { BemiCreateSlot(slot_); });
			LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
			db_->fresh = false;
			LWLockRelease(bemi_shared->lock);
			ereport(LOG, (errmsg("bemi: capture slot \"%s\" created for database %u", slot_, db_->dboid)));
		}
		bool found = false;
		InTransaction([&]() { found = OidIsValid(get_extension_oid("bemi", true)); });
		return found;
	});
	if (!installed)
		Retire();
}

// A slot that is missing (a failover to a standby, someone dropped it) or that PostgreSQL
// invalidated (max_slot_wal_keep_size exceeded) means changes were lost. Capture goes on with a
// new slot, and the loss is recorded in bemi.gaps, bemi_status() and the log. Then the worker
// is running (a worker restarted after a failure stays `failing` until it writes a batch), and
// its commits carry its replication origin: the plugin skips them, so it never captures itself.
void DatabaseRun::RecreateLostSlot() {
	PgCall([&]() {
		bool exists = BemiSlotExists(slot_);
		XLogRecPtr lost_from = exists ? BemiSlotLostFrom(slot_) : InvalidXLogRecPtr;

		if (!exists || !XLogRecPtrIsInvalid(lost_from)) {
			const char *reason =
			    exists ? "the capture slot was invalidated (max_slot_wal_keep_size exceeded)"
			           : "the capture slot was missing (dropped, or the server was promoted from a standby)";
			ereport(WARNING,
			        (errmsg("bemi: %s; changes since %X/%X are lost", reason, BEMI_LSN_ARGS(lost_from)),
			         errdetail("A new capture slot is created; the gap is recorded in bemi.gaps."),
			         errhint("Raise max_slot_wal_keep_size, and watch bemi_status().")));
			BemiReportError(db_, reason);
			if (exists)
				BemiDropSlot(slot_);
			InTransaction([&]() { BemiCreateSlot(slot_); });
			// Capture lost changes: say so in bemi.gaps, never silently.
			InTransactionWithSpi([&]() {
				Oid types[3] = {PG_LSNOID, PG_LSNOID, TEXTOID};
				Datum args[3] = {LSNGetDatum(lost_from), LSNGetDatum(GetXLogInsertRecPtr()),
				                 CStringGetTextDatum(reason)};
				char nulls[3] = {XLogRecPtrIsInvalid(lost_from) ? 'n' : ' ', ' ', ' '};

				if (SPI_execute_with_args(
				        "INSERT INTO bemi.gaps (from_lsn, to_lsn, reason) VALUES ($1, $2, $3)", 3, types,
				        args, nulls, false, 0) != SPI_OK_INSERT)
					elog(ERROR, "bemi: could not record a gap in bemi.gaps");
			});
		}

		LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
		if (db_->state == BEMI_STARTING || db_->state == BEMI_FAILED)
			db_->state = BEMI_RUNNING;
		LWLockRelease(bemi_shared->lock);
		ConditionVariableBroadcast(&db_->progress_cv);

		MemoryContextSwitchTo(context_);
		char name[NAMEDATALEN];
		BemiSlotName(db_->dboid, name, sizeof(name));
		RepOriginId origin = InvalidRepOriginId;
		InTransaction([&]() {
			origin = replorigin_by_name(name, true);
			if (origin == InvalidRepOriginId)
				origin = replorigin_create(name);
		});
#if PG_VERSION_NUM >= 160000
		replorigin_session_setup(origin, 0);
#else
		replorigin_session_setup(origin);
#endif
		replorigin_session_origin = origin;
		bemi_worker_origin = origin;
	});
}

// DROP EXTENSION (or a database without it): drop slot and origin, free the entry, exit.
void DatabaseRun::Retire() {
	// After a drop's hold nothing is in flight: the writers leave quietly, as when idle.
	if (writers_ && in_flight_.empty())
		writers_->Close();
	else if (writers_)
		writers_->Stop();
	PgCall([&]() {
		pgstat_report_activity(STATE_RUNNING, "bemi: dropping capture slot");
		if (ctx_)
			BemiStopDecoding(ctx_);
	});
	sink_.reset();
	PgCall([&]() {
		char origin[NAMEDATALEN];

		BemiDropSlot(slot_);
		if (replorigin_session_origin != InvalidRepOriginId) {
			replorigin_session_reset();
			replorigin_session_origin = InvalidRepOriginId;
		}
		BemiSlotName(db_->dboid, origin, sizeof(origin));
		InTransaction([&]() { replorigin_drop_by_name(origin, true, false); });
		ereport(LOG,
		        (errmsg("bemi: capture stopped for database %u; slot \"%s\" dropped", db_->dboid, slot_)));

		LWLockAcquire(bemi_shared->lock, LW_EXCLUSIVE);
		db_->pid = 0;
		db_->latch = nullptr;
		db_->fresh = false;
		db_->state = BEMI_UNUSED;
		LWLockRelease(bemi_shared->lock);
		ConditionVariableBroadcast(&db_->progress_cv);
		claimed = nullptr;
		proc_exit(0);
	});
	pg_unreachable();
}

// DROP DATABASE: release the slot and the connection; the backend dropping it takes over.
void DatabaseRun::LetGo() {
	if (writers_)
		writers_->Stop(); // DROP DATABASE waits for their connections too
	PgCall([&]() {
		if (ctx_)
			BemiStopDecoding(ctx_);
	});
	sink_.reset();
	PgCall([&]() {
		ereport(LOG, (errmsg("bemi: worker for database %u exiting for DROP DATABASE", db_->dboid)));
		proc_exit(0);
	});
	pg_unreachable();
}

// Every batch handed over (to the writers, or to the destination) is committed and applied.
void DatabaseRun::LandInFlight() {
	if (writers_) {
		writers_->Drain();
		Advance();
	}
	if (sink_->Remote()) {
		sink_->Settle(db_);
		Advance();
	}
}

// bemi_set_destination committed: what is decoded is written where it was going, then the
// worker exits to be started again (a second later) with the new destination. The new run starts
// from the later of bemi.progress and the new destination's progress for this source.
void DatabaseRun::NewDestination() {
	Flush();
	LandInFlight();
	PgCall([&]() {
		MemoryContextSwitchTo(context_);
		ConfirmDurable(true);
		ereport(LOG, (errmsg("bemi: the destination of database %u changed; the worker starts again", db_->dboid)));
		proc_exit(1);
	});
	pg_unreachable();
}

// Confirms the slot up to confirm_lsn_ once our last commit is durable. From 17 the same holds
// for the standbys named in synchronized_standby_slots. C-style, inside PgCall only.
void DatabaseRun::ConfirmDurable(bool flush_now) {
	if (confirm_lsn_ <= MyReplicationSlot->data.confirmed_flush)
		return;
	if (flush_now)
		XLogFlush(commit_end_);
	if (GetFlushRecPtr(NULL) < commit_end_)
		return;
#if PG_VERSION_NUM >= 170000
	// Failover: a standby syncs the slot's position only, so the slot may not pass what the
	// standbys of synchronized_standby_slots have of our trail (true when none are set).
	if (!StandbySlotsHaveCaughtup(commit_end_, DEBUG1))
		return;
#endif
	LogicalConfirmReceivedLocation(confirm_lsn_);
}

// Everything up to `reached` is in bemi.changes: tell the waiters, confirm the slot once durable.
// C-style, inside PgCall only.
void DatabaseRun::Applied(XLogRecPtr reached) {
	BemiRecovered(db_);
	confirm_lsn_ = reached;
	ConfirmDurable(false);
	if (reached > db_->applied_lsn) {
		SpinLockAcquire(&db_->mutex);
		db_->applied_lsn = reached;
		SpinLockRelease(&db_->mutex);
		ConditionVariableBroadcast(&db_->progress_cv);
	}
}

// Everything decoded so far is written (or, with writers, handed to them): tell the waiters
// what is committed, confirm the slot once durable.
void DatabaseRun::Flush() {
	XLogRecPtr reached = ctx_->reader->EndRecPtr;

	// With writers, or a destination (batches in flight to it): applied as they commit.
	if (writers_ || sink_->Remote()) {
		if (sink_->Pending())
			sink_->Drain(db_);
		uint64 sent = writers_ ? writers_->Sent() : sink_->RemoteSent();
		if (!in_flight_.empty() && in_flight_.back().first == sent)
			in_flight_.back().second = reached;
		else
			in_flight_.emplace_back(sent, reached);
		Advance();
		return;
	}
	if (sink_->Pending()) {
		sink_->Drain(db_);
		commit_end_ = XactLastCommitEnd;
	}
	PgCall([&]() {
		MemoryContextSwitchTo(context_);
		Applied(reached);
	});
}

// With writers: what they have committed in order becomes applied and, once durable, confirmed.
// Throws if a writer failed. With a destination: what it has committed, once its progress is
// written here (the slot waits for that local commit to be durable).
void DatabaseRun::Advance() {
	XLogRecPtr commit_end = InvalidXLogRecPtr;
	uint64 committed;
	if (writers_)
		committed = writers_->Committed(&commit_end);
	else {
		committed = sink_->RemoteSettled();
		commit_end = XactLastCommitEnd;
	}
	XLogRecPtr reached = InvalidXLogRecPtr;

	while (!in_flight_.empty() && in_flight_.front().first <= committed) {
		reached = in_flight_.front().second;
		in_flight_.pop_front();
	}
	if (commit_end > commit_end_)
		commit_end_ = commit_end;
	PgCall([&]() {
		MemoryContextSwitchTo(context_);
		if (XLogRecPtrIsInvalid(reached)) {
			ConfirmDurable(false);
			return;
		}
		Applied(reached);
	});
}

// A statement that may drop the extension is about to run (src/shared/lifecycle.c): with nothing
// in flight and no transaction open, hold still until its transaction ends. The changes decoded
// and not yet written stay in the sink. False if no drop asked.
bool DatabaseRun::HoldForDrop() {
	if (!PgCall([&]() { return BemiHoldRequested(db_); }))
		return false;
	LandInFlight();
	PgCall([&]() {
		BemiHoldStill(db_);
		MemoryContextSwitchTo(context_);
	});
	return true;
}

// A full batch is decoded: a backlog. The writers start, if bemi.writers wants some and none run.
// Nothing is in flight (without writers the worker commits each batch before it decodes on), so
// the writers' order starts afresh; the first batch with rows reads the chain's head from the trail.
void DatabaseRun::StartWriters() {
	if (writers_ || writers_wanted_ <= 0 || PgCall([&]() { return GetCurrentTimestamp() < writers_retry_at_; }))
		return;
	PgCall([&]() { MemoryContextSwitchTo(context_); }); // the handles live as long as the run
	writers_ = Writers::Start(db_, writers_wanted_);
	if (!writers_) {
		writers_retry_at_ = PgCall([]() { return TimestampTzPlusMilliseconds(GetCurrentTimestamp(), kWritersRetryMs); });
		return;
	}
	sink_->UseWriters(writers_.get());
}

// Idle: writers that had no batch for kWritersIdleMs leave, once all they wrote is applied.
void DatabaseRun::StopIdleWriters() {
	if (!writers_ || !PgCall([&]() {
		    return TimestampDifferenceExceeds(writers_->LastSentAt(), GetCurrentTimestamp(), kWritersIdleMs);
	    }))
		return;
	LandInFlight();
	writers_->Close();
	writers_.reset(); // in_flight_ is empty: Advance() saw every batch committed
	sink_->UseWriters(nullptr);
}

// Decodes WAL up to end_of_wal while the worker may; true if it stopped for a full batch.
// C-style, inside PgCall only: one PgCall for a whole round of WAL records.
bool DatabaseRun::Decode(XLogRecPtr end_of_wal) {
	if (BemiHoldRequested(db_))
		return false; // a drop waits: the round ends, and the loop holds still
	bool remote = sink_->Remote();
	uint32 records = 0;
	// A bemi_set_destination committing meanwhile stops the round: Loop() caps the next one.
	while (ctx_->reader->EndRecPtr < end_of_wal && (db_->state == BEMI_RUNNING || db_->state == BEMI_FAILING) &&
	       (switching_ || db_->destination_generation == destination_generation_)) {
		char *errm = nullptr;
		XLogRecord *record = XLogReadRecord(ctx_->reader, &errm);

		if (errm)
			elog(ERROR, "bemi: could not read WAL at %X/%X: %s", BEMI_LSN_ARGS(ctx_->reader->EndRecPtr),
			     errm);
		if (record)
			LogicalDecodingProcessRecord(ctx_, ctx_->reader);
		// Batches in flight to a destination: what libpq still holds of them goes out while the
		// next is decoded (a send that the socket takes or refuses at once).
		if (remote && (++records & 31) == 0)
			sink_->Pump();
		if (sink_->PendingChanges() >= bemi_batch_size)
			return true;
		CHECK_FOR_INTERRUPTS();
	}
	return false;
}

void DatabaseRun::Loop() {
	TimestampTz pending_since = 0;

	for (;;) {
		enum class Next { kDecode, kRetire, kLetGo, kNewDestination };
		XLogRecPtr end_of_wal = InvalidXLogRecPtr;
		Next next = PgCall([&]() {
			// Transactions leave us in TopMemoryContext: come back every round.
			MemoryContextSwitchTo(context_);
			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending) {
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			if (db_->state == BEMI_STOPPING)
				return Next::kRetire;
			if (db_->state == BEMI_PAUSED)
				return Next::kLetGo;
			SpinLockAcquire(&db_->mutex);
			bool moved = db_->destination_generation != destination_generation_;
			XLogRecPtr switch_at = db_->destination_from_lsn;
			SpinLockRelease(&db_->mutex);
			end_of_wal = GetFlushRecPtr(NULL);
			if (moved) {
				// Transactions that end up to bemi_set_destination's commit are this run's; the
				// next run writes the rest to the new destination.
				if (ctx_->reader->EndRecPtr >= switch_at)
					return Next::kNewDestination;
				switching_ = true;
				end_of_wal = Min(end_of_wal, switch_at);
			}
			if (ctx_->reader->EndRecPtr < end_of_wal)
				pgstat_report_activity(STATE_RUNNING, "bemi: decoding");
			return Next::kDecode;
		});
		if (next == Next::kRetire)
			Retire();
		if (next == Next::kLetGo)
			LetGo();
		if (next == Next::kNewDestination)
			NewDestination();
		if (HoldForDrop())
			continue; // the drop committed (retire) or not (decode on)

		while (PgCall([&]() { return Decode(end_of_wal); })) {
			StartWriters();
			Flush();
			PgCall([&]() {
				MemoryContextSwitchTo(context_);
				CHECK_FOR_INTERRUPTS();
			});
		}

		// Under a steady load each wake-up finds a transaction or two: let changes gather for
		// bemi.flush_delay so that the worker writes batches, not one transaction per commit.
		// The gathering sleep does not wait on the latch: every committing backend sets it, and
		// waking for each commit (a signal, a context switch) cost more of the worker's CPU under
		// pgbench than writing the rows. Stop requests and waiters are served within kGatherMs.
		bool wait = PgCall([&]() {
			if (!sink_->Pending() || sink_->PendingChanges() >= bemi_batch_size || bemi_flush_delay_ms <= 0)
				return false;
			if (pending_since == 0)
				pending_since = GetCurrentTimestamp();
			long remaining = TimestampDifferenceMilliseconds(
			    GetCurrentTimestamp(), TimestampTzPlusMilliseconds(pending_since, bemi_flush_delay_ms));
			if (remaining <= 0)
				return false;
			(void)WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, Min(remaining, kGatherMs), PG_WAIT_EXTENSION);
			return true;
		});
		if (wait)
			continue;
		Flush();
		pending_since = 0;
		if (sink_->Remote()) {
			// The end of a round (a backlog drained, or a steady load's few transactions): the
			// batches in flight to the destination are waited for, so that bemi_wait and the slot
			// follow within the round. Within a backlog, batches overlap with decoding.
			sink_->Settle(db_);
			Advance();
		}
		if (writers_ && upkeep_.Due()) {
			// Upkeep takes strong locks on bemi.changes: never with a batch in flight.
			writers_->Drain();
			Advance();
		}
		if (!PgCall([&]() { return BemiHoldRequested(db_); }))
			upkeep_.RunIfDue(db_);
		bool idle = PgCall([&]() { return ctx_->reader->EndRecPtr >= GetFlushRecPtr(NULL); });
		if (idle)
			StopIdleWriters();

		PgCall([&]() {
			// A writing commit meanwhile has set our latch: the wait below returns at once.
			if (idle) {
				ConfirmDurable(true); // idle: make our last batch durable and confirm it
				pgstat_report_activity(STATE_IDLE, nullptr);
				// What the last batches wrote, in the statistics within about a second. Forced:
				// unforced, PostgreSQL dates the flush by the last transaction's end, which
				// does not move while the worker is idle.
				TimestampTz now = GetCurrentTimestamp();
				if (TimestampDifferenceExceeds(stats_flushed_at_, now, kStatsFlushMs)) {
					(void)pgstat_report_stat(true);
					stats_flushed_at_ = now;
				}
				(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, kNaptimeMs,
				                PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
			}
		});
	}
}

} // namespace

} // namespace bemi

extern "C" void BemiWorkerRun(Oid dboid) {
	bemi::Enter([&]() {
		MemoryContext context = bemi::PgCall([&]() {
			bemi::Connect(dboid, "bemi worker");
			MemoryContext worker =
			    AllocSetContextCreate(TopMemoryContext, "bemi worker", ALLOCSET_DEFAULT_SIZES);
			MemoryContextSwitchTo(worker);
			return worker;
		});
		BemiDatabase *db = bemi::PgCall([&]() {
			BemiDatabase *claimed_db = bemi::Claim(dboid);
			bemi::Backoff(claimed_db);
			return claimed_db;
		});
		try {
			bemi::DatabaseRun(db, context).Run();
		} catch (const std::exception &e) {
			bemi::MarkFailed(db, e.what());
			throw;
		}
	});
}
