// readable.cpp: who may read which changes of the trail. Runs in the backend of whoever reads the
// trail through bemi's functions; the one implementation of the rule, for the check in front of a
// table's history (bemi._readable_table) and the filter of bemi's readers (bemi._may_read).
//
// A role may read the changes of a table when it is a superuser, a member of bemi_reader (those
// read bemi.changes itself), or when it may use the table's schema, SELECT the table, and
// row-level security hides none of its rows from it (the trail holds every row). Changes are
// tied to their table by OID: a table dropped since is readable by superusers and trail readers
// only, and a later table of the same name inherits nothing. Changes committed before the trail
// came to this database (restored from a dump: their OIDs are another database's) go by name,
// under the same rule: no table of that name now, trail readers only.
#include "fn.h"

#include "bemi/guard.hpp"

#include <fmt/format.h>

extern "C" {
#include "access/htup_details.h"
#include "funcapi.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#if PG_VERSION_NUM >= 160000
#include "catalog/pg_namespace.h"
#endif
}

namespace bemi {
namespace {

// Why a role may not read a table's changes, or MayRead.
enum class Refusal { MayRead, NoTable, NoUsage, NoSelect, HiddenByRls };

// The helpers below call PostgreSQL and own nothing: they run inside a PgCall.

bool IsTrailReader(Oid reader) {
	Oid role = get_role_oid("bemi_reader", true);
	return superuser_arg(reader) || (OidIsValid(role) && has_privs_of_role(reader, role));
}

AclResult SchemaUsage(Oid nsp, Oid role) {
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(NamespaceRelationId, nsp, role, ACL_USAGE);
#else
	return pg_namespace_aclcheck(nsp, role, ACL_USAGE);
#endif
}

bool TableExists(Oid relid) {
	return OidIsValid(relid) && SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid));
}

// Why `reader` may not read the changes of table `relid`, or MayRead.
Refusal CheckTable(Oid reader, Oid relid) {
	if (!TableExists(relid))
		return Refusal::NoTable;
	if (IsTrailReader(reader))
		return Refusal::MayRead;
	if (SchemaUsage(get_rel_namespace(relid), reader) != ACLCHECK_OK)
		return Refusal::NoUsage;
	if (pg_class_aclcheck(relid, reader, ACL_SELECT) != ACLCHECK_OK)
		return Refusal::NoSelect;
	if (check_enable_rls(relid, reader, true) == RLS_ENABLED)
		return Refusal::HiddenByRls;
	return Refusal::MayRead;
}

// The rule for one change: its table's rule while the table exists, trail readers only after.
bool MayReadChangeOf(Oid reader, Oid relid) {
	return TableExists(relid) ? CheckTable(reader, relid) == Refusal::MayRead : IsTrailReader(reader);
}

// What the check of one table found, gathered in one PgCall (plain pointers into palloc'd text).
struct TableFacts {
	Oid relid;
	const char *name;      // nullptr: no such table
	const char *qualified; // as regclass prints it
	const char *schema;
	char kind;
	Refusal refusal;
	const char *reader_name;
};

TableFacts LookUpTable(Oid relid, Oid reader) {
	return PgCall([&]() {
		TableFacts facts{};
		facts.relid = relid;
		facts.name = get_rel_name(relid);
		if (facts.name == nullptr)
			return facts;
		facts.qualified = DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)));
		facts.schema = get_namespace_name(get_rel_namespace(relid));
		facts.kind = get_rel_relkind(relid);
		facts.refusal = CheckTable(reader, relid);
		if (facts.refusal == Refusal::HiddenByRls)
			facts.reader_name = GetUserNameFromId(reader, false);
		return facts;
	});
}

Datum ReadableTable(const Oid *relid, TupleDesc row) {
	if (relid == nullptr)
		throw Error(ERRCODE_NULL_VALUE_NOT_ALLOWED, "table must not be NULL", {},
		            "Pass a table name, for example 'todo'::regclass.");
	TableFacts t = LookUpTable(*relid, GetUserId());
	if (t.name == nullptr)
		throw Error(ERRCODE_UNDEFINED_TABLE, fmt::format("table with OID {} does not exist", *relid));
	if (t.kind != RELKIND_RELATION && t.kind != RELKIND_PARTITIONED_TABLE)
		throw Error(
		    ERRCODE_WRONG_OBJECT_TYPE, fmt::format("\"{}\" is not a table", t.qualified),
		    "bemi records changes of tables only; views, sequences and foreign tables have no history.");
	switch (t.refusal) {
	case Refusal::MayRead:
		break;
	case Refusal::NoTable:
		throw Error(ERRCODE_UNDEFINED_TABLE, fmt::format("table with OID {} does not exist", *relid));
	case Refusal::NoUsage:
		throw Error(ERRCODE_INSUFFICIENT_PRIVILEGE, fmt::format("permission denied for schema {}", t.schema),
		            fmt::format("Reading the changes of table {} needs USAGE on its schema.", t.name),
		            "Ask the schema's owner for USAGE on it, or for membership in bemi_reader.");
	case Refusal::NoSelect:
		throw Error(ERRCODE_INSUFFICIENT_PRIVILEGE, fmt::format("permission denied for table {}", t.name),
		            "Reading the changes of a table needs SELECT on the table.");
	case Refusal::HiddenByRls:
		throw Error(
		    ERRCODE_INSUFFICIENT_PRIVILEGE,
		    fmt::format("row-level security hides rows of table {} from {}", t.name, t.reader_name),
		    "The trail holds every row of the table, so it is readable only by roles that see every row.");
	}
	return PgCall([&]() {
		Datum values[2] = {CStringGetTextDatum(t.schema), CStringGetTextDatum(t.name)};
		bool nulls[2] = {false, false};
		return HeapTupleGetDatum(heap_form_tuple(row, values, nulls));
	});
}

// The answer for the last table asked about, kept in the call site's fn_extra: a trail read asks
// about the same few tables over and over.
struct MayReadCache {
	Oid reader;
	Oid relid;
	bool may_read;
};

bool MayRead(Oid reader, Oid relid, const char *schema, const char *table, void **cache_slot,
             MemoryContext cache_context) {
	if (!OidIsValid(relid)) {
		// A change from a restored dump: rare, and a name lookup is cheap enough uncached.
		return PgCall([&]() {
			Oid nsp = get_namespace_oid(schema, true);
			return MayReadChangeOf(reader, OidIsValid(nsp) ? get_relname_relid(table, nsp) : InvalidOid);
		});
	}
	auto *cache = static_cast<MayReadCache *>(*cache_slot);
	if (cache && cache->reader == reader && cache->relid == relid)
		return cache->may_read;
	return PgCall([&]() {
		bool result = MayReadChangeOf(reader, relid);
		auto *kept = static_cast<MayReadCache *>(*cache_slot);
		if (kept == nullptr)
			*cache_slot = kept =
			    static_cast<MayReadCache *>(MemoryContextAlloc(cache_context, sizeof(MayReadCache)));
		*kept = MayReadCache{reader, relid, result};
		return result;
	});
}

} // namespace
} // namespace bemi

extern "C" Datum BemiReadableTable(const Oid *relid, TupleDesc row) {
	return bemi::Enter([&] { return bemi::ReadableTable(relid, row); });
}

extern "C" bool BemiMayRead(Oid reader, Oid relid, const char *schema, const char *table, void **cache,
                            MemoryContext cache_context) {
	return bemi::Enter([&] { return bemi::MayRead(reader, relid, schema, table, cache, cache_context); });
}
