// rules.cpp: reading bemi.rules inside decoding, and matching its patterns (see rules.hpp).
//
// bemi.rules is a user_catalog_table: PostgreSQL keeps the row versions decoding may still need,
// and a catalog scan in a decoding callback sees the table as of the change being decoded (the
// historic snapshot). So the rules are read with a catalog scan, never SPI, and without a lock (as
// the reorder buffer opens the relations it decodes). What is read is parsed once into plain C++
// values; matching a relation happens when its entry is built (relations.cpp), never per change.
#include "rules.hpp"

#include <algorithm>

extern "C" {
#include "access/genam.h"
#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
}

namespace bemi {
namespace {

// One row of bemi.rules as read: palloc'd strings in the load context, nullptr for NULL.
struct RawRule {
	const char *kind;
	const char *target;
	const char *method;
	const char *role;
	const char *application_name;
	int ncolumns;
	const char **columns;
};

struct RawRules {
	Oid relid; // InvalidOid: no bemi.rules (SQL older than 0.4.0)
	int n;
	RawRule *rules;
};

// Raw PostgreSQL helpers below: called only inside PgCall, they own nothing.

int ColumnNumber(TupleDesc desc, const char *name) {
	for (int i = 0; i < desc->natts; i++) {
		Form_pg_attribute att = TupleDescAttr(desc, i);
		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	return InvalidAttrNumber;
}

const char *TextColumn(HeapTuple tuple, TupleDesc desc, int attnum) {
	bool isnull;
	if (attnum == InvalidAttrNumber)
		return nullptr;
	Datum value = heap_getattr(tuple, attnum, desc, &isnull);
	if (isnull)
		return nullptr;
	if (TupleDescAttr(desc, attnum - 1)->atttypid == NAMEOID)
		return pstrdup(NameStr(*DatumGetName(value)));
	return TextDatumGetCString(value);
}

void ArrayColumn(HeapTuple tuple, TupleDesc desc, int attnum, RawRule *rule) {
	bool isnull;
	rule->ncolumns = 0;
	rule->columns = nullptr;
	if (attnum == InvalidAttrNumber)
		return;
	Datum value = heap_getattr(tuple, attnum, desc, &isnull);
	if (isnull)
		return;
	Datum *elements;
	bool *nulls;
	int n;
	deconstruct_array(DatumGetArrayTypeP(value), TEXTOID, -1, false, TYPALIGN_INT, &elements, &nulls, &n);
	rule->columns = (const char **)palloc0(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			rule->columns[rule->ncolumns++] = TextDatumGetCString(elements[i]);
}

// Every row of bemi.rules visible to the current (in decoding: historic) catalog snapshot, in
// the current memory context.
RawRules ReadRules() {
	RawRules out = {InvalidOid, 0, nullptr};
	Oid namespace_oid = get_namespace_oid("bemi", true);
	if (!OidIsValid(namespace_oid))
		return out;
	Oid relid = get_relname_relid("rules", namespace_oid);
	if (!OidIsValid(relid))
		return out;
	Relation rel = RelationIdGetRelation(relid);
	if (!RelationIsValid(rel))
		return out;
	out.relid = relid;
	TupleDesc desc = RelationGetDescr(rel);
	int kind = ColumnNumber(desc, "kind");
	int target = ColumnNumber(desc, "target");
	int columns = ColumnNumber(desc, "columns");
	int method = ColumnNumber(desc, "method");
	int role = ColumnNumber(desc, "role");
	int application_name = ColumnNumber(desc, "application_name");
	int capacity = 16;
	out.rules = (RawRule *)palloc(sizeof(RawRule) * capacity);
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, nullptr, 0, nullptr);
	HeapTuple tuple;
	while (HeapTupleIsValid(tuple = systable_getnext(scan))) {
		if (out.n == capacity) {
			capacity *= 2;
			out.rules = (RawRule *)repalloc(out.rules, sizeof(RawRule) * capacity);
		}
		RawRule *rule = &out.rules[out.n++];
		rule->kind = TextColumn(tuple, desc, kind);
		rule->target = TextColumn(tuple, desc, target);
		rule->method = TextColumn(tuple, desc, method);
		rule->role = TextColumn(tuple, desc, role);
		rule->application_name = TextColumn(tuple, desc, application_name);
		ArrayColumn(tuple, desc, columns, rule);
	}
	systable_endscan(scan);
	RelationClose(rel);
	return out;
}

bool Equals(const char *a, const char *b) {
	return a != nullptr && strcmp(a, b) == 0;
}

Mask MaskNamed(const char *method) {
	if (Equals(method, "hash"))
		return Mask::Hash;
	if (Equals(method, "drop"))
		return Mask::Drop;
	return Mask::Redact; // 'redact', and anything else: never less than a marker
}

Rules *instance = nullptr;

void OnRulesRelcache(Datum, Oid relid) noexcept {
	if (instance != nullptr)
		instance->OnRelcache(relid);
}

} // namespace

Rules &Rules::Get() {
	if (instance != nullptr)
		return *instance;
	// Lives as long as the process, like the callback that points to it.
	auto rules = std::unique_ptr<Rules>(new Rules());
	PgCall([&]() {
		rules->load_context_ = AllocSetContextCreate(CacheMemoryContext, "bemi rules", ALLOCSET_SMALL_SIZES);
		CacheRegisterRelcacheCallback(OnRulesRelcache, (Datum)0);
	});
	instance = rules.release();
	return *instance;
}

void Rules::OnRelcache(Oid relid) noexcept {
	if (!OidIsValid(relid) || relid == relid_)
		stale_ = true;
}

// Per change: a few comparisons, and one of the snapshot's committed list (short: the
// catalog-changing transactions since the oldest running one).
bool Rules::SameSnapshot() {
	if (!HistoricSnapshotActive())
		return true; // not decoding: nothing to compare (every caller decodes)
	Snapshot snapshot = GetCatalogSnapshot(InvalidOid); // the historic snapshot, when one is active
	ReadUnder &last = read_under_;
	if (snapshot->xmin == last.xmin && snapshot->xmax == last.xmax && snapshot->xcnt == last.committed.size() &&
	    std::equal(last.committed.begin(), last.committed.end(), snapshot->xip))
		return true;
	last.xmin = snapshot->xmin;
	last.xmax = snapshot->xmax;
	last.committed.assign(snapshot->xip, snapshot->xip + snapshot->xcnt);
	return false;
}

void Rules::Refresh(TransactionId xid) {
	bool same = SameSnapshot();
	if (!stale_ && same && (read_in_ == InvalidTransactionId || read_in_ == xid))
		return;
	stale_ = true; // until Load() succeeds: a failed read is tried again, whatever the snapshot
	if (Load())
		generation_++;
	stale_ = false;
	read_in_ = changed_in_ == xid ? xid : InvalidTransactionId;
}

bool Rules::Load() {
	MemoryContext context = load_context_;
	RawRules raw = PgCall([&]() {
		MemoryContextReset(context);
		MemoryContext old = MemoryContextSwitchTo(context);
		RawRules read = ReadRules();
		MemoryContextSwitchTo(old);
		return read;
	});
	std::vector<TableRule> tables;
	std::vector<WriterRule> writers;
	for (int i = 0; i < raw.n; i++) {
		const RawRule &r = raw.rules[i];
		if (Equals(r.kind, "ignore_writer")) {
			writers.push_back({r.role == nullptr, r.application_name == nullptr, r.role ? r.role : "",
			                   r.application_name ? r.application_name : ""});
			continue;
		}
		// bemi.rules' CHECKs hold target to 'schema.table'; a row that does not is skipped.
		const char *dot = r.target ? strchr(r.target, '.') : nullptr;
		if (dot == nullptr)
			continue;
		TableRule rule;
		rule.schema.assign(r.target, dot - r.target);
		rule.table.assign(dot + 1);
		rule.mask = Mask::None;
		if (Equals(r.kind, "ignore"))
			rule.kind = Kind::Ignore;
		else if (Equals(r.kind, "ignore_columns"))
			rule.kind = Kind::IgnoreColumns;
		else if (Equals(r.kind, "mask")) {
			rule.kind = Kind::Mask;
			rule.mask = MaskNamed(r.method);
		} else
			continue;
		for (int c = 0; c < r.ncolumns; c++)
			rule.columns.emplace_back(r.columns[c]);
		tables.push_back(std::move(rule));
	}
	PgCall([&]() { MemoryContextReset(context); });
	bool changed = raw.relid != relid_ || tables != tables_ || writers != writers_;
	tables_ = std::move(tables);
	writers_ = std::move(writers);
	relid_ = raw.relid;
	return changed;
}

bool Rules::TableRule::MatchesColumn(std::string_view column) const noexcept {
	return std::any_of(columns.begin(), columns.end(),
	                   [&](const std::string &pattern) { return GlobMatch(pattern, column); });
}

bool Rules::IgnoresTable(std::string_view schema, std::string_view table) const {
	return std::any_of(tables_.begin(), tables_.end(), [&](const TableRule &rule) {
		return rule.kind == Kind::Ignore && rule.Matches(schema, table);
	});
}

bool Rules::IgnoresColumn(std::string_view schema, std::string_view table, std::string_view column) const {
	return std::any_of(tables_.begin(), tables_.end(), [&](const TableRule &rule) {
		return rule.kind == Kind::IgnoreColumns && rule.Matches(schema, table) && rule.MatchesColumn(column);
	});
}

Mask Rules::MaskOf(std::string_view schema, std::string_view table, std::string_view column) const {
	Mask mask = Mask::None;
	for (const TableRule &rule : tables_)
		if (rule.kind == Kind::Mask && rule.mask > mask && rule.Matches(schema, table) &&
		    rule.MatchesColumn(column))
			mask = rule.mask;
	return mask;
}

bool Rules::IgnoresWriter(std::string_view role, std::string_view application_name) const {
	return std::any_of(writers_.begin(), writers_.end(), [&](const WriterRule &rule) {
		return (rule.any_role || rule.role == role) &&
		       (rule.any_application || GlobMatch(rule.application_name, application_name));
	});
}

} // namespace bemi
