// relations.cpp: the relation-and-plan cache of a decoding process (see relations.hpp). One entry
// per relation OID, built in one PgCall; invalidation marks the entry of that relation (and of
// partitions recorded under it), or all of them for changes to casts, functions, types, roles or
// schemas; what is replaced or invalid is freed at the next Sweep, so the long-lived worker keeps
// no plan it no longer uses.
#include "relations.hpp"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "image.hpp"
#include "rules.hpp"

extern "C" {
#include "access/htup_details.h"
#include "catalog/partition.h"
#include "catalog/pg_index.h"
#include "bemi/settings.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
}

namespace bemi {
namespace {

// What one PgCall of Build found; the vectors it filled are sized to these afterwards.
struct BuildCounts {
	int columns;
	int primary_key;
	List *composites; // palloc'd in the entry's context
};

// The primary key's column names into names (room for natts), looked up once per plan rather than
// per change. Raw PostgreSQL: inside PgCall.
int PlanPrimaryKey(Relation rel, NameData *names) {
	int npk = 0;
	RelationGetIndexList(rel); // fills rd_pkindex
	if (!OidIsValid(rel->rd_pkindex))
		return 0;
	HeapTuple index_tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(rel->rd_pkindex));
	if (!HeapTupleIsValid(index_tuple))
		return 0;
	auto index = (Form_pg_index)GETSTRUCT(index_tuple);
	for (int k = 0; k < index->indnkeyatts && npk < RelationGetDescr(rel)->natts; k++) {
		AttrNumber attnum = index->indkey.values[k];
		names[npk++] = TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname;
	}
	ReleaseSysCache(index_tuple);
	return npk;
}

// Invalidation callbacks, registered once per process. PostgreSQL calls them whenever it processes
// invalidations, so they only mark entries: no allocation, nothing that can throw or ERROR.
RelationCache *instance = nullptr;

void OnRelcache(Datum, Oid relid) noexcept {
	if (instance == nullptr)
		return;
	if (OidIsValid(relid))
		instance->Invalidate(relid);
	else
		instance->InvalidateAll();
}

// A cast created, a function given to another owner, a type or role changed: how a column becomes
// JSON may have changed (docs/security.md "Decoding runs no user code"). A schema renamed: the
// names changes are recorded under.
void OnCatalog(Datum, int, uint32) noexcept {
	if (instance != nullptr)
		instance->InvalidateAll();
}

} // namespace

std::unique_ptr<RecordedRelation> RecordedRelation::Build(Relation rel, MemoryContext parent,
                                                          const Rules *rules) {
	std::unique_ptr<RecordedRelation> entry(new RecordedRelation());
	RecordedRelation *e = entry.get();
	int natts = RelationGetDescr(rel)->natts;
	e->columns_.resize(std::max(natts, 1));
	e->primary_key_.resize(std::max(natts, 1));
	ColumnPlan *columns = e->columns_.data();
	NameData *key = e->primary_key_.data();

	// If this fails, the entry's destructor deletes what was built.
	BuildCounts counts = PgCall([&]() {
		e->context_ = AllocSetContextCreate(parent, "bemi relation", ALLOCSET_SMALL_SIZES);
		MemoryContext old = MemoryContextSwitchTo(e->context_);
		Oid relid = RelationGetRelid(rel);
		Oid recorded_as = relid;
		if (rel->rd_rel->relispartition && bemi_partitions_as_root) {
			List *ancestors = get_partition_ancestors(relid);
			if (ancestors != NIL)
				recorded_as = llast_oid(ancestors);
		}
		const char *schema = get_namespace_name(get_rel_namespace(recorded_as));
		const char *table = get_rel_name(recorded_as);
		const char *own_schema = get_namespace_name(RelationGetNamespace(rel));
		e->relid_ = relid;
		e->recorded_as_ = recorded_as;
		bool in_bemi = own_schema != nullptr && strcmp(own_schema, "bemi") == 0;
		e->rules_table_ =
		    in_bemi && recorded_as == relid && strcmp(RelationGetRelationName(rel), "rules") == 0;
		e->own_ = in_bemi && !e->rules_table_;
		e->schema_ = schema ? schema : "";
		e->table_ = table ? table : pstrdup(RelationGetRelationName(rel));
		e->natts_ = natts;

		TupleDesc desc = RelationGetDescr(rel);
		BuildCounts found = {0, 0, NIL};
		for (int i = 0; i < desc->natts; i++) {
			Form_pg_attribute att = TupleDescAttr(desc, i);
			if (!att->attisdropped)
				PlanColumn(att, i, e->context_, &columns[found.columns++], &found.composites);
		}
		found.primary_key = PlanPrimaryKey(rel, key);
		MemoryContextSwitchTo(old);
		return found;
	});
	e->columns_.resize(counts.columns);
	e->primary_key_.resize(counts.primary_key);
	e->composites_.reserve(list_length(counts.composites));
	ListCell *cell;
	foreach (cell, counts.composites)
		e->composites_.push_back(lfirst_oid(cell));
	std::sort(e->columns_.begin(), e->columns_.end(), KeyBefore);
	if (rules != nullptr) {
		e->rules_generation_ = rules->generation();
		if (!e->own_ && !e->rules_table_)
			e->ApplyRules(*rules);
	}
	e->valid_ = true;
	return entry;
}

// The rules' verdicts on this relation, by the names its changes are recorded under: whether it
// is ignored, and each column's mask and whether it is ignorable. Masked-out columns leave the
// plan; a column masked by hash gets its output function (the text that is hashed).
void RecordedRelation::ApplyRules(const Rules &rules) {
	std::string_view schema(schema_), table(table_);
	ignored_ = rules.IgnoresTable(schema, table);
	bool needs_output = false;
	for (ColumnPlan &col : columns_) {
		std::string_view name(NameStr(col.name), col.name_len);
		col.mask = rules.MaskOf(schema, table, name);
		col.ignorable = rules.IgnoresColumn(schema, table, name);
		has_ignorable_ |= col.ignorable;
		needs_output |=
		    col.mask == Mask::Hash && col.kind != ColumnKind::Float && col.kind != ColumnKind::Output;
	}
	columns_.erase(std::remove_if(columns_.begin(), columns_.end(),
	                              [](const ColumnPlan &col) { return col.mask == Mask::Drop; }),
	               columns_.end());
	if (!needs_output)
		return;
	ColumnPlan *columns = columns_.data();
	int ncolumns = int(columns_.size());
	MemoryContext context = context_;
	PgCall([&]() {
		for (int c = 0; c < ncolumns; c++) {
			ColumnPlan *col = &columns[c];
			if (col->mask != Mask::Hash || col->kind == ColumnKind::Float || col->kind == ColumnKind::Output)
				continue;
			Oid output;
			bool varlena;
			getTypeOutputInfo(col->type, &output, &varlena);
			fmgr_info_cxt(output, &col->output, context);
		}
	});
}

bool RecordedRelation::DependsOn(Oid relid) const noexcept {
	return relid == relid_ || relid == recorded_as_ ||
	       std::find(composites_.begin(), composites_.end(), relid) != composites_.end();
}

RecordedRelation::~RecordedRelation() {
	if (context_ != nullptr)
		MemoryContextDelete(context_);
}

RelationCache &RelationCache::Get() {
	if (instance != nullptr)
		return *instance;
	// Lives as long as the process, like the callbacks that point to it.
	auto cache = std::unique_ptr<RelationCache>(new RelationCache());
	PgCall([&]() {
		cache->context_ = AllocSetContextCreate(CacheMemoryContext, "bemi relations", ALLOCSET_DEFAULT_SIZES);
		CacheRegisterRelcacheCallback(OnRelcache, (Datum)0);
		CacheRegisterSyscacheCallback(CASTSOURCETARGET, OnCatalog, (Datum)0);
		CacheRegisterSyscacheCallback(PROCOID, OnCatalog, (Datum)0);
		CacheRegisterSyscacheCallback(TYPEOID, OnCatalog, (Datum)0);
		CacheRegisterSyscacheCallback(AUTHOID, OnCatalog, (Datum)0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, OnCatalog, (Datum)0);
	});
	instance = cache.release();
	return *instance;
}

// A plan during whose build an invalidation arrived serves the caller once and is built again
// next time.
const RecordedRelation &RelationCache::Lookup(Relation rel, const Rules *rules) {
	Oid relid = RelationGetRelid(rel);
	uint64 generation = rules != nullptr ? rules->generation() : 0;
	auto found = entries_.find(relid);
	if (found != entries_.end() && found->second->Serves(rel) &&
	    found->second->rules_generation() == generation)
		return *found->second;

	uint64 invalidations = invalidations_;
	std::unique_ptr<RecordedRelation> built = RecordedRelation::Build(rel, context_, rules);
	if (invalidations != invalidations_) {
		built->Invalidate();
		stale_ = true;
	}
	// The entry it replaces may still be in use in this change: freed at the next Sweep.
	retired_.reserve(retired_.size() + 1);
	std::unique_ptr<RecordedRelation> &slot = entries_[relid];
	if (slot)
		retired_.push_back(std::move(slot));
	slot = std::move(built);
	return *slot;
}

void RelationCache::Sweep() {
	retired_.clear();
	if (!stale_)
		return;
	for (auto it = entries_.begin(); it != entries_.end();) {
		if (it->second->valid())
			++it;
		else
			it = entries_.erase(it);
	}
	stale_ = false;
}

// The entries that depend on the relation: its own, those of partitions recorded under it (its
// name is theirs), those with a column of its composite type.
void RelationCache::Invalidate(Oid relid) noexcept {
	invalidations_++;
	for (auto &item : entries_) {
		if (item.second->DependsOn(relid)) {
			item.second->Invalidate();
			stale_ = true;
		}
	}
}

void RelationCache::InvalidateAll() noexcept {
	invalidations_++;
	for (auto &item : entries_)
		item.second->Invalidate();
	stale_ = true;
}

} // namespace bemi
