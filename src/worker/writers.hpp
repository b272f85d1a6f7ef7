// writers.hpp: writer processes that write the worker's batches in parallel with its decoding
// (writers.cpp; bemi.writers). Worker code only.
//
// The worker (the decoder) fills batches as before and hands each, numbered, to the next writer
// (the least busy one) through a shm_mq in a DSM segment of the writers' start. Writers commit in batch order through
// two turnstiles in that segment: ids (a batch draws its ids only after the previous batch drew
// its own) and commit (a batch updates bemi.progress and commits only after the previous batch
// committed), so bemi.progress stays a prefix of what is written and ids follow change order.
#pragma once

#include "sink.hpp"

extern "C" {
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/shm_mq.h"
}

#include <deque>
#include <memory>
#include <vector>

namespace bemi {

// The connection and settings of the worker's processes (worker.cpp). C-style, inside PgCall only.
void Connect(Oid dboid, const char *name);

struct WritersShared; // in the DSM segment (writers.cpp)

// A batch's place in the order, for BatchWriter::Write (batch.cpp). Plain data; the functions
// below are C-style, inside PgCall only.
struct Turns {
	WritersShared *shared;
	uint64 seq;           // this batch's number, from 1
	bool careful_allowed; // the decoder writes this batch itself: careful mode may apply
	BemiSkipped skipped;  // what the rules skipped in the batch's transactions, counted at commit
};
// Adds a committed batch's skip counts to the database's entry. C-style, inside PgCall only.
void AddSkipped(BemiDatabase *db, const BemiSkipped &skipped);
// The chain's head the batches of this run link to, passed on in the ids turn: only the batch
// holding the ids turn reads or moves it. Invalid at the start of a run.
ChainHead *SharedChainHead(const Turns *turns);
void WaitIdsTurn(const Turns *turns);    // the previous batch has drawn its ids
void PassIdsTurn(const Turns *turns);    // ours are drawn: the next batch may draw
void WaitCommitTurn(const Turns *turns); // the previous batch has committed
void PassCommitTurn(const Turns *turns); // committed (XactLastCommitEnd is ours): publish

// The decoder's side: the writers of one run, started by Start() and gone with the process.
class Writers {
  public:
	// Starts up to n writers for db; nullptr if none could start (the worker then writes itself).
	static std::unique_ptr<Writers> Start(BemiDatabase *db, int n);

	uint64 Sent() const { return sent_; }
	// When the last batch was handed to a writer (or the writers started).
	TimestampTz LastSentAt() const { return last_sent_at_; }
	// Hands the batch to the next writer; blocks while that writer's queue is full.
	void Send(const Batch &batch, const Progress &reached, TimestampTz last_commit, const BemiSkipped &skipped);
	// The last batch committed in order and the end of its commit record; throws if a writer failed.
	uint64 Committed(XLogRecPtr *commit_end);
	// Waits until every batch sent has committed; throws if a writer failed.
	void Drain();
	// The turn of a batch the decoder writes itself, after Drain().
	Turns OwnTurn() { return Turns{shared_, ++sent_, true, {}}; }
	// DROP EXTENSION, DROP DATABASE: the writers are stopped and gone when this returns.
	void Stop();
	// Idle, every batch committed (Drain()): the writers leave quietly (their queues are detached)
	// and are gone when this returns, with the run's segment. The object is done.
	void Close();

  private:
	Writers(BemiDatabase *db, dsm_segment *segment, WritersShared *shared)
	    : db_(db), segment_(segment), shared_(shared) {}
	[[noreturn]] void Fail(const char *what);
	// Stop's and Close's common part: stop, the writers told to go (quietly: their queues
	// detached; else SIGTERM), and waited for.
	void Finish(bool quietly);

	BemiDatabase *db_;
	dsm_segment *segment_;
	WritersShared *shared_;
	std::vector<shm_mq_handle *> queues_;
	std::vector<BackgroundWorkerHandle *> handles_;
	std::vector<std::deque<uint64>> assigned_; // per writer: batches sent to it, not known committed
	uint64 sent_ = 0;
	TimestampTz last_sent_at_ = 0;
};

// Before a run reads bemi.progress: the writers of the database's previous run (if any still
// live) are told to stop and are waited for, so that none commits behind the new run's back.
void WaitForOldWriters(BemiDatabase *db);

} // namespace bemi
