// writers.cpp: the worker's writer processes (bemi.writers), and the decoder's side of them.
//
// Runs in two kinds of processes. The database's worker (the decoder), when a backlog comes, makes
// a DSM segment: the shared state below plus one shm_mq per writer (kQueueBytes each), starts the
// writers as dynamic background workers (Start), and sends each batch (a header, the rows, the arena's bytes) to the
// writer with the fewest batches not yet committed (ties: the one whose oldest is oldest, as it is
// free first: commits go in order); a full queue blocks it until that writer takes more, so what is decoded
// ahead of what is committed is bounded: per writer the batch it writes plus kQueueBytes, and the
// batch the decoder is sending. A writer
// (BemiWriterRun, entered from writer_shim.c) receives batches and writes each in one transaction
// through BatchWriter::Write, which takes the turnstiles: ids in batch order, then the rows in
// parallel with the other writers, then bemi.progress and commit in batch order.
//
// Idle again, the decoder closes them (Close): every batch committed, it detaches the queues, each
// writer leaves quietly, and the segment goes; the next backlog starts a new set.
//
// Failures: a writer that errors or exits marks the shared state failed; the decoder notices it
// (the flag, a detached queue, a stopped worker handle) and fails the run like a failed batch. The
// decoder's exit detaches the segment: its callback marks it stopped, so waiting writers give up
// without committing, and idle ones see their queue detached and leave. The next run waits for
// them all to be gone (WaitForOldWriters) before it reads bemi.progress.
//
// Writers' own changes are tagged with the origin DoNotReplicateId (a PostgreSQL 15 origin can be
// set up by one process only): PostgreSQL writes it into their WAL records and commit records
// without advancing any origin, and the plugin skips it in the worker's decoding, as it skips the
// worker's own origin (src/decoding/session.cpp).
//
// Crossings: BemiWriterRun enters C++ through bemi::Enter; every PostgreSQL call is inside a
// PgCall, one per step (receive, write a batch).
#include "writers.hpp"

#include <fmt/format.h>

#include <cstring>
#include <deque>
#include <memory>

extern "C" {
#include "bemi/worker.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "replication/origin.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shm_toc.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"
}

namespace bemi {

constexpr uint64 kTocMagic = 0x62656d6957727472; // "bemiWrtr"
constexpr Size kQueueBytes = 4 * 1024 * 1024; // a batch of 2000 typical changes fits
constexpr int kMaxWriters = 16; // bemi.writers' maximum

struct WritersShared {
	Oid dboid;
	int nwriters;
	Latch *decoder_latch;
	slock_t mutex; // protects what follows
	uint64 ids_done;       // the last batch whose ids are drawn
	uint64 committed;      // the last batch committed
	XLogRecPtr commit_end; // the end of its commit record
	int alive;             // writers attached
	int pids[kMaxWriters];
	bool stop;   // the decoder is gone or stopping: give up without committing
	bool failed; // a writer failed: error says why
	char error[BEMI_ERROR_LEN];
	ConditionVariable cv; // the counters, stop or failed moved
	ChainHead chain_head; // SharedChainHead(): read and moved in the ids turn only
};

namespace {

struct BatchHeader {
	uint64 seq;
	Progress reached;
	TimestampTz last_commit;
	BemiSkipped skipped;
	uint64 rows;
	uint64 arena_bytes;
};

bool writer_clean_exit = false; // a writer leaving because its decoder is gone

// Sleeps until shared->*counter reaches want; an ERROR if the run stops or fails meanwhile.
// C-style, inside PgCall only.
void WaitFor(WritersShared *shared, uint64 WritersShared::*counter, uint64 want) {
	bool reported = false;

	for (;;) {
		SpinLockAcquire(&shared->mutex);
		uint64 value = shared->*counter;
		bool stop = shared->stop || shared->failed;
		SpinLockRelease(&shared->mutex);
		if (value >= want)
			break;
		if (!reported) {
			pgstat_report_activity(STATE_RUNNING, counter == &WritersShared::committed
			                                          ? "bemi: waiting for the previous batch to commit"
			                                          : "bemi: waiting for the previous batch to draw its ids");
			reported = true;
		}
		if (stop) {
			ConditionVariableCancelSleep();
			ereport(ERROR, (errcode(ERRCODE_OPERATOR_INTERVENTION),
			                errmsg("bemi: a writer gives up its batch: the worker or another writer stopped")));
		}
		(void)ConditionVariableTimedSleep(&shared->cv, 1000, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
}

// A writer's exit, whatever its cause (a PostgreSQL DSM detach callback: plain C).
void WriterDetached(dsm_segment *, Datum arg) {
	auto *shared = reinterpret_cast<WritersShared *>(DatumGetPointer(arg));

	SpinLockAcquire(&shared->mutex);
	shared->alive--;
	for (int i = 0; i < kMaxWriters; i++)
		if (shared->pids[i] == MyProcPid)
			shared->pids[i] = 0;
	if (!writer_clean_exit && !shared->stop && !shared->failed) {
		shared->failed = true;
		strlcpy(shared->error, "a writer process exited", sizeof(shared->error));
	}
	SpinLockRelease(&shared->mutex);
	ConditionVariableBroadcast(&shared->cv);
	if (shared->decoder_latch)
		SetLatch(shared->decoder_latch);
}

// The decoder's exit: the writers stop (a PostgreSQL DSM detach callback: plain C).
void DecoderDetached(dsm_segment *, Datum arg) {
	auto *shared = reinterpret_cast<WritersShared *>(DatumGetPointer(arg));

	SpinLockAcquire(&shared->mutex);
	shared->stop = true;
	shared->decoder_latch = nullptr;
	SpinLockRelease(&shared->mutex);
	ConditionVariableBroadcast(&shared->cv);
}

// Reads the order's state; true if a writer failed (*error says why). C-style, inside PgCall only.
bool ReadState(WritersShared *shared, uint64 *committed, XLogRecPtr *commit_end, char *error, size_t len) {
	SpinLockAcquire(&shared->mutex);
	*committed = shared->committed;
	*commit_end = shared->commit_end;
	bool failed = shared->failed;
	if (failed)
		strlcpy(error, shared->error, len);
	SpinLockRelease(&shared->mutex);
	return failed;
}

} // namespace

void AddSkipped(BemiDatabase *db, const BemiSkipped &skipped) {
	if (skipped.table_rules == 0 && skipped.column_rules == 0 && skipped.writer_rules == 0)
		return;
	SpinLockAcquire(&db->mutex);
	db->skipped_table_rules += skipped.table_rules;
	db->skipped_column_rules += skipped.column_rules;
	db->skipped_writer_rules += skipped.writer_rules;
	SpinLockRelease(&db->mutex);
}

ChainHead *SharedChainHead(const Turns *turns) {
	return &turns->shared->chain_head;
}

void WaitIdsTurn(const Turns *turns) {
	WaitFor(turns->shared, &WritersShared::ids_done, turns->seq - 1);
}

void PassIdsTurn(const Turns *turns) {
	WritersShared *shared = turns->shared;

	SpinLockAcquire(&shared->mutex);
	if (shared->ids_done < turns->seq)
		shared->ids_done = turns->seq;
	SpinLockRelease(&shared->mutex);
	ConditionVariableBroadcast(&shared->cv);
}

void WaitCommitTurn(const Turns *turns) {
	WaitFor(turns->shared, &WritersShared::committed, turns->seq - 1);
}

void PassCommitTurn(const Turns *turns) {
	WritersShared *shared = turns->shared;

	SpinLockAcquire(&shared->mutex);
	shared->committed = turns->seq;
	if (XactLastCommitEnd > shared->commit_end)
		shared->commit_end = XactLastCommitEnd;
	Latch *decoder = shared->decoder_latch;
	SpinLockRelease(&shared->mutex);
	ConditionVariableBroadcast(&shared->cv);
	if (decoder && decoder != MyLatch) // the worker's own batch needs no wake-up
		SetLatch(decoder);
}

std::unique_ptr<Writers> Writers::Start(BemiDatabase *db, int n) {
	n = std::min(n, kMaxWriters);
	struct Made {
		dsm_segment *segment;
		WritersShared *shared;
	};
	Made made = PgCall([&]() {
		shm_toc_estimator estimator;
		shm_toc_initialize_estimator(&estimator);
		shm_toc_estimate_chunk(&estimator, sizeof(WritersShared));
		for (int i = 0; i < n; i++)
			shm_toc_estimate_chunk(&estimator, kQueueBytes);
		shm_toc_estimate_keys(&estimator, 1 + n);
		Size size = shm_toc_estimate(&estimator);

		dsm_segment *segment = dsm_create(size, 0);
		dsm_pin_mapping(segment); // for the process's life, whatever transaction is open
		shm_toc *toc = shm_toc_create(kTocMagic, dsm_segment_address(segment), size);
		auto *shared = static_cast<WritersShared *>(shm_toc_allocate(toc, sizeof(WritersShared)));
		memset(shared, 0, sizeof(*shared));
		shared->dboid = db->dboid;
		shared->nwriters = n;
		shared->decoder_latch = MyLatch;
		SpinLockInit(&shared->mutex);
		ConditionVariableInit(&shared->cv);
		shm_toc_insert(toc, 0, shared);
		for (int i = 0; i < n; i++) {
			shm_mq *mq = shm_mq_create(shm_toc_allocate(toc, kQueueBytes), kQueueBytes);
			shm_mq_set_sender(mq, MyProc);
			shm_toc_insert(toc, 1 + i, mq);
		}
		on_dsm_detach(segment, DecoderDetached, PointerGetDatum(shared));
		SpinLockAcquire(&db->mutex);
		db->writers_dsm = dsm_segment_handle(segment);
		db->writers = 0;
		db->batches_sent = db->batches_committed = 0;
		SpinLockRelease(&db->mutex);
		return Made{segment, shared};
	});
	std::unique_ptr<Writers> writers(new Writers(db, made.segment, made.shared));
	for (int i = 0; i < n; i++) {
		BackgroundWorkerHandle *handle = nullptr;
		shm_mq_handle *queue = PgCall([&]() -> shm_mq_handle * {
			BackgroundWorker worker;
			memset(&worker, 0, sizeof(worker));
			worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
			worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
			worker.bgw_restart_time = BGW_NEVER_RESTART;
			worker.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(made.segment));
			worker.bgw_notify_pid = MyProcPid;
			memcpy(worker.bgw_extra, &i, sizeof(i));
			strlcpy(worker.bgw_library_name, "bemi", BGW_MAXLEN);
			strlcpy(worker.bgw_function_name, "bemi_writer_main", BGW_MAXLEN);
			snprintf(worker.bgw_name, BGW_MAXLEN, "bemi writer %d for database %u", i + 1, db->dboid);
			strlcpy(worker.bgw_type, "bemi writer", BGW_MAXLEN);
			if (!RegisterDynamicBackgroundWorker(&worker, &handle)) {
				ereport(WARNING,
				        (errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				         errmsg("bemi: could start only %d of %d writer processes for database %u", i, n,
				                db->dboid),
				         errhint("Writers count against max_worker_processes (now %d): raise it, or lower "
				                 "bemi.writers.",
				                 max_worker_processes)));
				return nullptr;
			}
			shm_toc *toc = shm_toc_attach(kTocMagic, dsm_segment_address(made.segment));
			auto *mq = static_cast<shm_mq *>(shm_toc_lookup(toc, 1 + i, false));
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
			shm_mq_handle *h = shm_mq_attach(mq, made.segment, handle);
			MemoryContextSwitchTo(old);
			return h;
		});
		if (queue == nullptr)
			break;
		writers->queues_.push_back(queue);
		writers->handles_.push_back(handle);
		writers->assigned_.emplace_back();
	}
	if (writers->queues_.empty()) {
		// No slot for any: the segment goes now (the worker tries again later, in the same process).
		PgCall([&]() {
			SpinLockAcquire(&db->mutex);
			db->writers_dsm = 0;
			SpinLockRelease(&db->mutex);
			dsm_detach(made.segment);
		});
		return nullptr;
	}
	bool started = PgCall([&]() {
		pid_t pid;
		for (BackgroundWorkerHandle *handle : writers->handles_)
			if (WaitForBackgroundWorkerStartup(handle, &pid) != BGWH_STARTED)
				return false;
		SpinLockAcquire(&db->mutex);
		db->writers = static_cast<int>(writers->handles_.size());
		SpinLockRelease(&db->mutex);
		return true;
	});
	if (!started)
		writers->Fail("a writer process did not start");
	writers->last_sent_at_ = PgCall([]() { return GetCurrentTimestamp(); });
	return writers;
}

void Writers::Fail(const char *what) {
	char error[BEMI_ERROR_LEN] = "";
	PgCall([&]() {
		SpinLockAcquire(&shared_->mutex);
		shared_->stop = true;
		if (shared_->failed)
			strlcpy(error, shared_->error, sizeof(error));
		SpinLockRelease(&shared_->mutex);
		ConditionVariableBroadcast(&shared_->cv);
		for (BackgroundWorkerHandle *handle : handles_)
			TerminateBackgroundWorker(handle);
		SpinLockAcquire(&db_->mutex);
		db_->writers = 0;
		SpinLockRelease(&db_->mutex);
	});
	throw Error(ERRCODE_INTERNAL_ERROR, fmt::format("bemi: {}{}{}", what, error[0] ? ": " : "", error), "",
	            "The worker restarts and resumes from bemi.progress; see the server log for the writer's error.");
}

void Writers::Send(const Batch &batch, const Progress &reached, TimestampTz last_commit,
                   const BemiSkipped &skipped) {
	BatchHeader header{};
	header.seq = ++sent_;
	header.reached = reached;
	header.last_commit = last_commit;
	header.skipped = skipped;
	header.rows = batch.Rows().size();
	header.arena_bytes = batch.ArenaBytes();
	shm_mq_iovec parts[3];
	parts[0].data = reinterpret_cast<const char *>(&header);
	parts[0].len = sizeof(header);
	parts[1].data = reinterpret_cast<const char *>(batch.Rows().data());
	parts[1].len = header.rows * sizeof(Batch::Row);
	parts[2].data = batch.At(0);
	parts[2].len = header.arena_bytes;
	// Any writer may take any batch (the turnstiles go by number): the least busy one, so that the
	// decoder does not wait on a busy writer while another is idle.
	XLogRecPtr commit_end;
	uint64 committed = Committed(&commit_end);
	size_t pick = 0;
	for (size_t i = 0; i < assigned_.size(); i++) {
		while (!assigned_[i].empty() && assigned_[i].front() <= committed)
			assigned_[i].pop_front();
		const std::deque<uint64> &mine = assigned_[i], &best = assigned_[pick];
		if (mine.size() < best.size() || (mine.size() == best.size() && !mine.empty() && mine.front() < best.front()))
			pick = i;
	}
	assigned_[pick].push_back(header.seq);
	shm_mq_handle *queue = queues_[pick];
	shm_mq_result result = PgCall([&]() {
		shm_mq_result r = shm_mq_sendv(queue, parts, 3, false, true);
		last_sent_at_ = GetCurrentTimestamp();
		SpinLockAcquire(&db_->mutex);
		db_->batches_sent = sent_;
		SpinLockRelease(&db_->mutex);
		return r;
	});
	if (result != SHM_MQ_SUCCESS)
		Fail("a writer process stopped");
}

uint64 Writers::Committed(XLogRecPtr *commit_end) {
	char error[BEMI_ERROR_LEN];
	uint64 committed = 0;
	bool failed = PgCall([&]() {
		bool f = ReadState(shared_, &committed, commit_end, error, sizeof(error));
		for (BackgroundWorkerHandle *handle : handles_) {
			pid_t pid;
			f = f || GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED;
		}
		SpinLockAcquire(&db_->mutex);
		db_->batches_committed = committed;
		SpinLockRelease(&db_->mutex);
		return f;
	});
	if (failed)
		Fail("a writer process failed");
	return committed;
}

void Writers::Drain() {
	XLogRecPtr end;
	while (Committed(&end) < sent_) {
		PgCall([&]() {
			pgstat_report_activity(STATE_RUNNING, "bemi: waiting for the writers to commit");
			(void)ConditionVariableTimedSleep(&shared_->cv, 1000, PG_WAIT_EXTENSION);
		});
	}
	PgCall([&]() { ConditionVariableCancelSleep(); });
}

void Writers::Stop() {
	Finish(false);
}

void Writers::Close() {
	Finish(true);
	PgCall([&]() {
		SpinLockAcquire(&db_->mutex);
		db_->writers_dsm = 0;
		SpinLockRelease(&db_->mutex);
		dsm_detach(segment_);
	});
	queues_.clear();
	handles_.clear();
	assigned_.clear();
}

void Writers::Finish(bool quietly) {
	PgCall([&]() {
		SpinLockAcquire(&shared_->mutex);
		shared_->stop = true; // a writer's exit is then no failure
		SpinLockRelease(&shared_->mutex);
		ConditionVariableBroadcast(&shared_->cv);
		// Quietly: idle, they wait on their queues; detached, each leaves with exit code 0.
		if (quietly)
			for (shm_mq_handle *queue : queues_)
				shm_mq_detach(queue);
		else
			for (BackgroundWorkerHandle *handle : handles_)
				TerminateBackgroundWorker(handle);
		for (BackgroundWorkerHandle *handle : handles_)
			(void)WaitForBackgroundWorkerShutdown(handle);
		SpinLockAcquire(&db_->mutex);
		db_->writers = 0;
		SpinLockRelease(&db_->mutex);
	});
}

void WaitForOldWriters(BemiDatabase *db) {
	PgCall([&]() {
		uint32 handle = db->writers_dsm;

		if (handle == 0)
			return;
		pgstat_report_activity(STATE_RUNNING, "bemi: waiting for the last run's writers to exit");
		for (;;) {
			dsm_segment *segment = dsm_attach(handle);
			int alive = 0;

			if (segment == nullptr)
				break; // every process of the last run has detached
			shm_toc *toc = shm_toc_attach(kTocMagic, dsm_segment_address(segment));
			auto *shared = toc ? static_cast<WritersShared *>(shm_toc_lookup(toc, 0, true)) : nullptr;
			if (shared != nullptr && shared->dboid == db->dboid) {
				SpinLockAcquire(&shared->mutex);
				shared->stop = true;
				alive = shared->alive;
				int pids[kMaxWriters];
				memcpy(pids, shared->pids, sizeof(pids));
				SpinLockRelease(&shared->mutex);
				ConditionVariableBroadcast(&shared->cv);
				// Our own writers, maybe blocked on a lock: ask them to go.
				for (int pid : pids)
					if (pid != 0)
						(void)kill(pid, SIGTERM);
			}
			dsm_detach(segment);
			if (alive == 0)
				break;
			(void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 100, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		SpinLockAcquire(&db->mutex);
		db->writers_dsm = 0;
		db->writers = 0;
		SpinLockRelease(&db->mutex);
	});
}

namespace {

// One writer process: batches from its queue, each written in its turn, until the decoder goes.
[[noreturn]] void WriterLoop(uint32 handle, int index) {
	struct Setup {
		WritersShared *shared;
		shm_mq_handle *queue;
		BemiDatabase *db;
	};
	Setup setup = PgCall([&]() {
		dsm_segment *segment = dsm_attach(handle);
		if (segment == nullptr) {
			writer_clean_exit = true; // the decoder is gone already
			proc_exit(0);
		}
		dsm_pin_mapping(segment);
		shm_toc *toc = shm_toc_attach(kTocMagic, dsm_segment_address(segment));
		if (toc == nullptr)
			elog(ERROR, "bemi: a writer found no shared state in its segment");
		auto *shared = static_cast<WritersShared *>(shm_toc_lookup(toc, 0, false));
		auto *mq = static_cast<shm_mq *>(shm_toc_lookup(toc, 1 + index, false));
		SpinLockAcquire(&shared->mutex);
		shared->alive++;
		shared->pids[index] = MyProcPid;
		SpinLockRelease(&shared->mutex);
		on_dsm_detach(segment, WriterDetached, PointerGetDatum(shared));
		shm_mq_set_receiver(mq, MyProc);
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		shm_mq_handle *queue = shm_mq_attach(mq, segment, nullptr);
		MemoryContextSwitchTo(old);
		Connect(shared->dboid, "bemi writer");
		// Our changes are the trail's own: tagged so that decoding skips them (see the top).
		replorigin_session_origin = DoNotReplicateId;
		BemiDatabase *db = BemiFindDatabase(shared->dboid);
		if (db == nullptr) {
			writer_clean_exit = true;
			proc_exit(0);
		}
		return Setup{shared, queue, db};
	});
	std::unique_ptr<BatchWriter> writer = StartBatchWriter(setup.shared->dboid);
	Batch batch;
	for (;;) {
		Size size = 0;
		void *data = nullptr;
		shm_mq_result result = PgCall([&]() {
			shm_mq_result r = shm_mq_receive(setup.queue, &size, &data, true);
			if (r != SHM_MQ_WOULD_BLOCK)
				return r;
			// Idle: what this writer wrote counts in the statistics before it waits.
			pgstat_report_activity(STATE_IDLE, nullptr);
			(void)pgstat_report_stat(true);
			return shm_mq_receive(setup.queue, &size, &data, false);
		});
		if (result != SHM_MQ_SUCCESS)
			PgCall([&]() {
				writer_clean_exit = true; // the decoder detached: its run is over
				proc_exit(0);
			});
		BatchHeader header;
		if (size < sizeof(header))
			throw Error(ERRCODE_INTERNAL_ERROR, "bemi: a writer received a truncated batch");
		const char *bytes = static_cast<const char *>(data);
		std::memcpy(&header, bytes, sizeof(header));
		size_t rows_bytes = header.rows * sizeof(Batch::Row);
		if (size != sizeof(header) + rows_bytes + header.arena_bytes)
			throw Error(ERRCODE_INTERNAL_ERROR, "bemi: a writer received a batch of the wrong size");
		batch.Assign(reinterpret_cast<const Batch::Row *>(bytes + sizeof(header)), header.rows,
		             bytes + sizeof(header) + rows_bytes, header.arena_bytes);
		Turns turns{setup.shared, header.seq, false, header.skipped};
		writer->Write(setup.db, batch, header.reached, header.last_commit, &turns);
		batch.Release();
	}
}

} // namespace

} // namespace bemi

extern "C" void BemiWriterRun(Datum arg) {
	bemi::Enter([&]() {
		int index;
		std::memcpy(&index, MyBgworkerEntry->bgw_extra, sizeof(index));
		try {
			bemi::WriterLoop(DatumGetUInt32(arg), index);
		} catch (const std::exception &e) {
			// Say why in the shared state, for the decoder's error, before this process ends.
			std::string message = e.what();
			bemi::PgCall([&]() {
				dsm_segment *segment = dsm_find_mapping(DatumGetUInt32(arg));
				shm_toc *toc = segment ? shm_toc_attach(bemi::kTocMagic, dsm_segment_address(segment)) : nullptr;
				auto *shared =
				    toc ? static_cast<bemi::WritersShared *>(shm_toc_lookup(toc, 0, true)) : nullptr;
				if (shared == nullptr)
					return;
				SpinLockAcquire(&shared->mutex);
				if (!shared->failed && !shared->stop) {
					shared->failed = true;
					strlcpy(shared->error, message.c_str(), sizeof(shared->error));
				}
				SpinLockRelease(&shared->mutex);
				ConditionVariableBroadcast(&shared->cv);
				if (shared->decoder_latch)
					SetLatch(shared->decoder_latch);
			});
			throw;
		}
	});
}
