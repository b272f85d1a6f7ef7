// relations.hpp: what decoding knows of each relation it meets, looked up once and kept until an
// invalidation says it changed. Runs in any decoding process (the worker, or a session reading a
// slot with the bemi plugin), one cache per process.
#pragma once

#include "bemi/guard.hpp"

extern "C" {
#include "fmgr.h"
#include "utils/rel.h"
}

#include <memory>
#include <unordered_map>
#include <vector>

namespace bemi {

// How a column becomes a JSON value (image.cpp). Common types are converted without a text round
// trip; the rest go through to_jsonb() of the value, or their output text where to_jsonb would run
// code an ordinary role could have written (docs/security.md "Decoding runs no user code").
enum class ColumnKind {
	Bool,
	Int,      // int2/int4/int8: a JSON number
	Numeric,  // a number, or a string for NaN and infinities
	Float,    // output text; a number when it is one
	Text,     // text, varchar: the string itself
	Jsonb,    //
	DateTime, // date, timestamp, timestamptz: ISO 8601
	Output,   // no JSON meaning, or a conversion that would run untrusted code: its output text
	ToJsonb,  // arrays, composites, json, types with trusted casts to json
};

// One column of an image plan. Plain data: FmgrInfo's memory lives in the relation's context.
struct ColumnPlan {
	int attno; // 0-based index in the tuple
	ColumnKind kind;
	Oid type; // base type
	NameData name;
	int name_len;
	FmgrInfo output;   // Float, Output
	FmgrInfo to_jsonb; // ToJsonb: to_jsonb with this column's type as argument
};

// A relation as decoding records it: where its changes go (a partition under its root by default),
// whether they are recorded at all, and the plan of its images (columns in jsonb key order, the
// primary key's column names). Built whole or not at all; immutable once built.
class RecordedRelation {
  public:
	static std::unique_ptr<RecordedRelation> Build(Relation rel, MemoryContext parent);
	~RecordedRelation();
	RecordedRelation(const RecordedRelation &) = delete;
	RecordedRelation &operator=(const RecordedRelation &) = delete;

	Oid relid() const { return relid_; }
	Oid recorded_as() const { return recorded_as_; }
	bool own() const { return own_; } // in schema bemi: the worker's own tables, never recorded
	const char *schema() const { return schema_; }
	const char *table() const { return table_; }
	const std::vector<ColumnPlan> &columns() const { return columns_; }
	const std::vector<NameData> &primary_key() const { return primary_key_; }
	// Whether this plan may serve a change of rel: not invalidated, built for its descriptor.
	bool Serves(Relation rel) const { return valid_ && natts_ == RelationGetDescr(rel)->natts; }
	// Whether a change to relation relid (an invalidation) may change this entry: its own, its
	// root's (whose name it records under), a composite type's its columns contain.
	bool DependsOn(Oid relid) const noexcept;
	void Invalidate() noexcept { valid_ = false; }
	bool valid() const { return valid_; }

  private:
	RecordedRelation() = default;

	MemoryContext context_ = nullptr; // the names and FmgrInfo memory; deleted with the entry
	Oid relid_ = InvalidOid;
	Oid recorded_as_ = InvalidOid;
	bool own_ = false;
	bool valid_ = false;
	int natts_ = 0;
	const char *schema_ = nullptr;
	const char *table_ = nullptr;
	std::vector<ColumnPlan> columns_;
	std::vector<NameData> primary_key_;
	std::vector<Oid> composites_; // relations of the composite types in the columns' types
};

// The one cache of the process, keyed by relation OID. Invalidation callbacks only mark entries;
// entries are freed by Sweep, which callers run where no entry is in use (at the start of a
// callback), and replaced ones are kept until then, so a reference from Lookup stays good for the
// rest of the change even if an invalidation arrives meanwhile.
class RelationCache {
  public:
	static RelationCache &Get();

	// The entry for rel, built again if it was invalidated. Valid until the next Sweep.
	const RecordedRelation &Lookup(Relation rel);
	// Frees invalidated and replaced entries (those of dropped relations too).
	void Sweep();

	// Invalidation callbacks: PostgreSQL calls them at any time; they only mark.
	void Invalidate(Oid relid) noexcept;
	void InvalidateAll() noexcept;

  private:
	RelationCache() = default;

	MemoryContext context_ = nullptr;
	std::unordered_map<Oid, std::unique_ptr<RecordedRelation>> entries_;
	std::vector<std::unique_ptr<RecordedRelation>> retired_;
	bool stale_ = false;       // some entries are invalid and not freed yet
	uint64 invalidations_ = 0; // counts invalidations, to notice one during a build
};

} // namespace bemi
