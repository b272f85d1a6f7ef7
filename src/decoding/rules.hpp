// rules.hpp: the tracking rules of bemi.rules (issue 13) as decoding applies them. Runs in any
// decoding process (the worker, or a session reading a slot with the bemi plugin), one set per
// process, read with the decoding (historic) snapshot: a change is judged by the rules in force
// when it was made.
#pragma once

#include "relations.hpp"

#include "bemi/glob.h"

extern "C" {
#include "access/transam.h"
}

#include <string>
#include <string_view>
#include <vector>

namespace bemi {

// The rules of the database, as of the change being decoded. Read from bemi.rules when first
// needed and again:
// - when the change is decoded under another historic snapshot than the last read (another set of
//   committed catalog changes): a transaction open across a rule's commit is decoded after it, in
//   the snapshot its changes were made in, and the transactions after it in a newer one;
// - after Drop: the plugin drops them when it decodes a change of bemi.rules (so a rule changed in
//   the middle of a transaction applies from exactly there), when a new decoding session starts
//   (it may start anywhere in the WAL), and on a relcache invalidation of bemi.rules.
// Relation entries record the generation their verdicts were made under (relations.hpp); it moves
// only when what is read differs.
class Rules {
  public:
	static Rules &Get();

	// Reads bemi.rules again if the rules were dropped or were read under another snapshot, for a
	// change of the (top-level) transaction xid. At the start of a callback, before any relation
	// entry is looked up; no reference into the rules is kept across callbacks.
	void Refresh(TransactionId xid);
	// A new session: read them again, whatever the snapshot.
	void Drop() noexcept { stale_ = true; }
	// A change of bemi.rules decoded in transaction xid: what is read next, until that transaction
	// ends, holds its own uncommitted changes of the rules.
	void Drop(TransactionId xid) noexcept {
		stale_ = true;
		changed_in_ = xid;
	}
	uint64 generation() const { return generation_; }

	// By the names a change is recorded under (a partition's root's, by default).
	bool IgnoresTable(std::string_view schema, std::string_view table) const;
	// Whether an UPDATE changing only such columns is left out (ignore with columns).
	bool IgnoresColumn(std::string_view schema, std::string_view table, std::string_view column) const;
	// The strictest mask of the column's matching rules (drop, then redact, then hash), or None.
	Mask MaskOf(std::string_view schema, std::string_view table, std::string_view column) const;
	bool HasWriterRules() const { return !writers_.empty(); }
	// A writer is the verified `_bemi` identity of the transaction: its role outside SECURITY
	// DEFINER functions (the caller when there is one) and its application_name, which a rule
	// matches by pattern (GlobMatch, as table names).
	bool IgnoresWriter(std::string_view role, std::string_view application_name) const;

	// Relcache invalidation (callback): only marks.
	void OnRelcache(Oid relid) noexcept;

  private:
	enum class Kind { Ignore, IgnoreColumns, Mask };
	struct TableRule {
		Kind kind;
		std::string schema, table; // the two halves of the target pattern
		std::vector<std::string> columns;
		bemi::Mask mask;
		bool Matches(std::string_view s, std::string_view t) const noexcept {
			return GlobMatch(schema, s) && GlobMatch(table, t);
		}
		bool MatchesColumn(std::string_view column) const noexcept;
		bool operator==(const TableRule &o) const {
			return kind == o.kind && schema == o.schema && table == o.table && columns == o.columns &&
			       mask == o.mask;
		}
	};
	struct WriterRule {
		bool any_role, any_application;
		std::string role, application_name;
		bool operator==(const WriterRule &o) const {
			return any_role == o.any_role && any_application == o.any_application && role == o.role &&
			       application_name == o.application_name;
		}
	};
	// What a historic snapshot lets a catalog scan see of committed transactions: those before
	// xmin by their commit status, those from xmin to xmax listed in committed (the catalog-changing
	// ones). Two snapshots alike here see the same committed rows of bemi.rules. The decoded
	// transaction's own changes are not here: Drop(xid) covers them.
	struct ReadUnder {
		TransactionId xmin = InvalidTransactionId, xmax = InvalidTransactionId;
		std::vector<TransactionId> committed;
	};

	Rules() = default;
	// Whether what was read differs from the rules held before.
	bool Load();
	// Whether the current historic snapshot is the one the rules were read under; records it if not.
	bool SameSnapshot();

	MemoryContext load_context_ = nullptr; // what one read of bemi.rules allocates; reset by the next
	std::vector<TableRule> tables_;
	std::vector<WriterRule> writers_;
	Oid relid_ = InvalidOid; // bemi.rules as last read, or InvalidOid when it did not exist
	bool stale_ = true;
	ReadUnder read_under_;
	TransactionId changed_in_ = InvalidTransactionId; // the last transaction seen changing bemi.rules
	TransactionId read_in_ = InvalidTransactionId; // set when the rules read hold its own changes
	uint64 generation_ = 1; // 0 is "built without rules" (relations.hpp)
};

} // namespace bemi
