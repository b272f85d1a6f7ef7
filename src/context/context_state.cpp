// context_state.cpp: the rules of a backend's context state (see context_state.hpp). Runs in every
// backend, called by capture.cpp; no PostgreSQL calls.
#include "context_state.hpp"

#include <cstring>

namespace bemi {

Context::Context(const Jsonb *jsonb) {
	size_t size = VARSIZE(jsonb);
	words_.reset(new uint64_t[(size + sizeof(uint64_t) - 1) / sizeof(uint64_t)]);
	std::memcpy(words_.get(), jsonb, size);
}

ContextPtr CopyContext(const Jsonb *jsonb) {
	return jsonb ? std::make_shared<const Context>(jsonb) : nullptr;
}

const ContextPtr &ContextState::EffectivePtr() const {
	return statement_ ? statement_ : local_set_ ? local_ : session_;
}

const Jsonb *ContextState::Effective() const {
	const ContextPtr &context = EffectivePtr();
	return context ? context->jsonb() : nullptr;
}

namespace {

// Do two contexts say the same (both none, or the same jsonb bytes)?
bool SameContext(const ContextPtr &a, const ContextPtr &b) {
	if (a == b)
		return true;
	if (!a || !b)
		return false;
	size_t size = VARSIZE(a->jsonb());
	return size == VARSIZE(b->jsonb()) && std::memcmp(a->jsonb(), b->jsonb(), size) == 0;
}

} // namespace

void ContextState::Set(ContextPtr context, bool is_local, int level, bool in_transaction_block) {
	// The state on entering this savepoint level, saved once per level: the only allocation.
	if (level >= 1 && (saved_.empty() || saved_.back().level != level))
		saved_.push_back({level, session_, local_, local_set_});
	// Outside a transaction block a local context lives for this statement only: say so at commit
	// if nothing was written with it (a function that sets it and writes is fine).
	if (is_local && !in_transaction_block)
		local_unused_outside_block_ = true;
	if (is_local) {
		local_ = std::move(context);
		local_set_ = true;
	} else {
		session_ = std::move(context);
		local_.reset();
		local_set_ = false;
	}
	generation_++;
}

void ContextState::StartStatement(ContextPtr comment) {
	if (!comment && !statement_)
		return;
	statement_ = std::move(comment);
	generation_++;
}

bool ContextState::Writing(Oid role, Oid caller) {
	wrote_ = true;
	if (!emitted_valid_ || emitted_role_ != role || emitted_caller_ != caller)
		return true;
	if (emitted_generation_ == generation_)
		return false;
	if (!SameContext(emitted_, EffectivePtr()))
		return true;
	emitted_generation_ = generation_;
	return false;
}

void ContextState::MessageEmitted(Oid role, Oid caller, int level) {
	emitted_valid_ = true;
	emitted_ = EffectivePtr();
	emitted_generation_ = generation_;
	emitted_role_ = role;
	emitted_caller_ = caller;
	emitted_level_ = level;
}

void ContextState::SubtransactionCommitted(int level) noexcept {
	if (emitted_level_ >= level)
		emitted_level_ = level - 1;
	// What this level saved now belongs to its parent, unless the parent saved its own.
	if (!saved_.empty() && saved_.back().level == level) {
		if (saved_.size() >= 2 && saved_[saved_.size() - 2].level == level - 1)
			saved_.pop_back();
		else
			saved_.back().level = level - 1;
	}
}

void ContextState::SubtransactionAborted(int level) noexcept {
	// The message emitted inside the aborted savepoint is gone with it.
	if (emitted_level_ >= level) {
		emitted_valid_ = false;
		emitted_.reset();
	}
	while (!saved_.empty() && saved_.back().level >= level) {
		Saved &saved = saved_.back();
		session_ = std::move(saved.session);
		local_ = std::move(saved.local);
		local_set_ = saved.local_set;
		saved_.pop_back();
		generation_++;
	}
}

// However a transaction ends, nothing of it carries over but the session context; on ROLLBACK that
// is the one it had when the transaction started.
void ContextState::TransactionEnded(bool aborted) noexcept {
	if (aborted && !saved_.empty())
		session_ = std::move(saved_.front().session);
	local_.reset();
	local_set_ = false;
	saved_.clear();
	statement_.reset();
	emitted_valid_ = false;
	emitted_.reset();
	emitted_generation_ = 0;
	emitted_role_ = InvalidOid;
	emitted_caller_ = InvalidOid;
	generation_++;
	wrote_ = false;
	local_unused_outside_block_ = false;
	drop_pending_ = false;
}

} // namespace bemi
