// context_state.hpp: the context state of one backend, as a type that keeps its rules.
//
// Which application context is in force (a statement's Bemi comment, else the transaction's, else
// the session's), what each savepoint level must get back when it is rolled back, and whether the
// message in the WAL still says what is in force, so that a write emits one only when something
// changed. Pure C++: it calls no PostgreSQL function (capture.cpp does), so it is used in any frame.
#pragma once

extern "C" {
#include "postgres.h"
#include "utils/jsonb.h"
}

#include <cstdint>
#include <memory>
#include <vector>

namespace bemi {

// An application context: a jsonb object, copied out of PostgreSQL's memory once, then immutable
// and shared by the session, the transaction and the savepoint levels that hold it.
class Context {
  public:
	explicit Context(const Jsonb *jsonb);
	const Jsonb *jsonb() const { return reinterpret_cast<const Jsonb *>(words_.get()); }

  private:
	std::unique_ptr<uint64_t[]> words_; // 8-byte aligned, as a varlena must be
};
using ContextPtr = std::shared_ptr<const Context>;

ContextPtr CopyContext(const Jsonb *jsonb);

class ContextState {
  public:
	// The context in force: the running statement's comment, else the transaction's, else the
	// session's. Null when there is none.
	const Jsonb *Effective() const;

	// bemi_set_context at transaction nesting level `level`. Either it takes effect whole or it
	// throws (out of memory) with no effect.
	void Set(ContextPtr context, bool is_local, int level, bool in_transaction_block);

	// A new top-level statement; `comment` is the context its Bemi comment gives, or null.
	void StartStatement(ContextPtr comment);

	// A row-modifying statement is about to run as `role`, called by `caller` (the role outside any
	// SECURITY DEFINER function): notes that the transaction writes, and says whether the context
	// message must be emitted first (none yet in this transaction, or the context, the role or the
	// caller changed since).
	bool Writing(Oid role, Oid caller);
	void MessageEmitted(Oid role, Oid caller, int level);

	bool Wrote() const { return wrote_; }
	bool LocalUnused() const { return local_unused_outside_block_; }
	// DROP EXTENSION bemi (or what dropped it) ran in this transaction: stop capture at commit.
	void DropPending() { drop_pending_ = true; }
	bool DropIsPending() const { return drop_pending_; }

	// Ends of savepoints and transactions. They allocate nothing and cannot fail.
	void SubtransactionCommitted(int level) noexcept;
	void SubtransactionAborted(int level) noexcept;
	void TransactionEnded(bool aborted) noexcept;

  private:
	// The state on entering savepoint level `level` (level 1: the transaction's start).
	struct Saved {
		int level;
		ContextPtr session;
		ContextPtr local;
		bool local_set;
	};

	ContextPtr session_;
	ContextPtr local_;
	bool local_set_ = false;   // this transaction overrides the session context (even with null)
	ContextPtr statement_;     // from the running top-level statement's comment
	std::vector<Saved> saved_; // innermost level last

	// The context in force, shared (null: none).
	const ContextPtr &EffectivePtr() const;

	// Emission: `generation_` moves whenever the context in force may change; the message in the
	// WAL is current while `emitted_generation_` equals it and the role is the same, or while the
	// context in force has the same bytes as `emitted_` (Bemi's ORM packages put the same comment
	// on every write of a request: one message for all of them, not one per statement).
	uint64_t generation_ = 1;
	uint64_t emitted_generation_ = 0;
	bool emitted_valid_ = false; // a message of this transaction, not rolled back, says `emitted_`
	ContextPtr emitted_;
	Oid emitted_role_ = InvalidOid;
	Oid emitted_caller_ = InvalidOid;
	int emitted_level_ = 0;
	bool wrote_ = false;
	bool local_unused_outside_block_ = false;
	bool drop_pending_ = false;
};

} // namespace bemi
