// ddl_events.cpp: schema changes of recorded tables as events in the trail (issue 15, "DDL"),
// captured in the backend that runs them, around the statement (capture_shim.c's utility hook).
//
// Before a statement that may change a recorded table's definition, the tables it is about are
// looked up and their columns noted ([{attnum, name, type}]); after it ran, the columns are read
// again and, per table, one transactional logical message (prefix "bemi_ddl") carries the command
// tag, the table's name before and after, the statement's text and both column lists. It is
// signed like a context message (secret.c), for this transaction and with a payload tag of its
// own, so that pg_logical_emit_message cannot forge one and no signed context message can pass for
// one. The output plugin turns it into a change with operation 'DDL' (session_ddl.cpp) that
// carries the transaction's context and identity (the context message is emitted first, as for a
// row write) and sits in commit order among the row changes around it.
//
// Statements: CREATE TABLE [AS] (not of a temporary or unlogged table), ALTER TABLE in all its
// forms (with the tables it recurses to), RENAME of a table, a column or a constraint, SET SCHEMA,
// DROP TABLE, and ALTER SCHEMA ... RENAME and DROP SCHEMA for the tables they rename or drop. A rewrite of the table by an ALTER TABLE
// (a type change, a volatile default, SET LOGGED) is noted in the row ("rewritten": true).
// VACUUM FULL, CLUSTER and REINDEX rewrite files but no value and no column: not recorded.
//
// A partition recorded under its root (bemi.partitions_as_root) has its DDL recorded under its
// root's name, without column lists (they are the partition's, not the root's); the children an
// ALTER TABLE recurses to are recorded only when their columns changed or they were rewritten.
// A statement run while another recorded statement on the same table is running (the event
// trigger's REPLICA IDENTITY FULL after CREATE TABLE, the DDL guard's before SET LOGGED) is part
// of that statement's row, not a row of its own.
//
// Cost: any other utility statement returns after a look at its node tag, a CREATE of a temporary
// or unlogged table after a look at its parse tree. A DDL statement on a permanent table scans
// pg_extension (is bemi installed here, at 0.5.0 or later?) and looks up its tables' columns in
// the catalog caches, twice.
#include "ddl_events.hpp"
#include "ddl_guard.hpp"

#include "bemi/guard.hpp"

extern "C" {
#include "bemi/bemi.h"
#include "bemi/context.h"
#include "bemi/secret.h"
#include "bemi/settings.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "replication/message.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
}

namespace bemi {
namespace {

// Longest statement text kept in a DDL row, in bytes.
constexpr int kStatementMax = 4000;

// A table a statement is about, as it was before the statement ran. palloc'd, plain values.
struct DdlTarget {
	Oid relid;          // InvalidOid for the table a CREATE makes, found after it ran
	bool named;         // named by the statement (not a child it recurses to)
	bool existed;       // existed before the statement
	bool permanent;     // was permanent before
	Oid relfilenode;    // before; 0 for a partitioned table
	const char *object; // schema.table before, quoted as needed
	const char *columns; // JSON array of its columns before, or nullptr
	// The table its changes were recorded under before (its root, for a partition), and its names.
	Oid recorded_as;
	const char *recorded_schema, *recorded_table;
};

// One running statement that records DDL rows. Frames nest (a statement run by an event trigger
// or a function inside another): the innermost is `top`.
struct DdlFrame {
	DdlFrame *outer;
	const char *tag;
	const char *statement;
	// CREATE TABLE [AS]: the table it makes, by the schema it goes to (a statement run inside it,
	// by a function with its own search_path, must find it too).
	const char *created;
	Oid created_in;
	List *targets;     // of DdlTarget *
};

DdlFrame *top = nullptr;

// The helpers below are raw PostgreSQL and own nothing: they are called only inside PgCall.

// The table whose name a table's changes are recorded under: its root's for a partition.
Oid RecordedAs(Oid relid) {
	if (bemi_partitions_as_root && get_rel_relispartition(relid)) {
		List *ancestors = get_partition_ancestors(relid);
		if (ancestors != NIL)
			return llast_oid(ancestors);
	}
	return relid;
}

const char *QualifiedName(Oid relid) {
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

Oid RelfilenodeOf(Oid relid) {
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		return InvalidOid;
	Oid relfilenode = reinterpret_cast<Form_pg_class>(GETSTRUCT(tuple))->relfilenode;
	ReleaseSysCache(tuple);
	return relfilenode;
}

// A column's type as time travel names it (bemi_current_shape compares it with format_type under
// search_path pg_catalog): unqualified in pg_catalog, schema-qualified anywhere else, whatever the
// search_path of the statement was.
const char *TypeName(Oid type, int32 typmod) {
	bits16 flags = FORMAT_TYPE_TYPEMOD_GIVEN;
	HeapTuple tuple = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
	if (HeapTupleIsValid(tuple)) {
		if (reinterpret_cast<Form_pg_type>(GETSTRUCT(tuple))->typnamespace != PG_CATALOG_NAMESPACE)
			flags |= FORMAT_TYPE_FORCE_QUALIFY;
		ReleaseSysCache(tuple);
	}
	return format_type_extended(type, typmod, flags);
}

// The columns of a table as a JSON array [{"attnum": 1, "name": "id", "type": "integer"}, ...], in
// attnum order, dropped columns left out. nullptr for a partition recorded under its root: its
// changes are read with the root's columns.
const char *ColumnsOf(Oid relid) {
	if (RecordedAs(relid) != relid)
		return nullptr;
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		return nullptr;
	int natts = reinterpret_cast<Form_pg_class>(GETSTRUCT(tuple))->relnatts;
	ReleaseSysCache(tuple);
	StringInfoData buf;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	bool first = true;
	for (int attnum = 1; attnum <= natts; attnum++) {
		HeapTuple att_tuple = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attnum));
		if (!HeapTupleIsValid(att_tuple))
			continue;
		auto *att = reinterpret_cast<Form_pg_attribute>(GETSTRUCT(att_tuple));
		if (!att->attisdropped) {
			appendStringInfo(&buf, "%s{\"attnum\": %d, \"name\": ", first ? "" : ", ", attnum);
			escape_json(&buf, NameStr(att->attname));
			appendStringInfoString(&buf, ", \"type\": ");
			escape_json(&buf, TypeName(att->atttypid, att->atttypmod));
			appendStringInfoChar(&buf, '}');
			first = false;
		}
		ReleaseSysCache(att_tuple);
	}
	appendStringInfoChar(&buf, ']');
	return buf.data;
}

// The text of this statement alone (the query string may hold several), clipped.
const char *StatementText(const PlannedStmt *pstmt, const char *query_string) {
	if (query_string == nullptr)
		return "";
	int location = pstmt->stmt_location;
	if (location < 0 || location > static_cast<int>(strlen(query_string)))
		location = 0;
	int len = strlen(query_string + location);
	if (pstmt->stmt_len > 0 && pstmt->stmt_len < len)
		len = pstmt->stmt_len;
	if (len > kStatementMax) {
		len = pg_mbcliplen(query_string + location, len, kStatementMax);
		return psprintf("%.*s...", len, query_string + location);
	}
	return pnstrdup(query_string + location, len);
}

// Is this table being recorded by a statement running around this one?
bool RecordedByOuter(Oid relid) {
	for (DdlFrame *frame = top; frame != nullptr; frame = frame->outer) {
		if (frame->created != nullptr && get_relname_relid(frame->created, frame->created_in) == relid)
			return true;
		ListCell *lc;
		foreach (lc, frame->targets)
			if (static_cast<DdlTarget *>(lfirst(lc))->relid == relid)
				return true;
	}
	return false;
}

// Adds table `relid` (and, when the statement recurses, its inheritors) as it is now.
void AddTarget(DdlFrame *frame, Oid relid, bool recurse) {
	if (!OidIsValid(relid) || !IsUserTable(relid))
		return;
	List *tables = recurse ? find_all_inheritors(relid, NoLock, nullptr) : list_make1_oid(relid);
	ListCell *lc;
	foreach (lc, tables) {
		Oid table = lfirst_oid(lc);
		bool named = table == relid;
		// A partition recorded under its root: its root's row (this statement's) stands for it.
		if (!named && (RecordedAs(table) != table || !IsUserTable(table)))
			continue;
		if (RecordedByOuter(table))
			continue;
		auto *target = static_cast<DdlTarget *>(palloc0(sizeof(DdlTarget)));
		target->relid = table;
		target->named = named;
		target->existed = true;
		target->permanent = get_rel_persistence(table) == RELPERSISTENCE_PERMANENT;
		target->relfilenode = RelfilenodeOf(table);
		target->object = QualifiedName(table);
		target->columns = ColumnsOf(table);
		target->recorded_as = RecordedAs(table);
		target->recorded_schema = get_namespace_name(get_rel_namespace(target->recorded_as));
		target->recorded_table = get_rel_name(target->recorded_as);
		frame->targets = lappend(frame->targets, target);
	}
}

Oid LookUp(RangeVar *rv) {
	return rv == nullptr ? InvalidOid : RangeVarGetRelid(rv, NoLock, true);
}

// The tables of schema `name` bemi records, named (what DROP SCHEMA drops, ALTER SCHEMA renames).
void AddSchemaTables(DdlFrame *frame, const char *name) {
	Oid nsp = get_namespace_oid(name, true);
	if (!OidIsValid(nsp))
		return;
	// Few statements drop a schema: a plain scan of pg_class by namespace is enough.
	List *relids = NIL;
	Relation rel = table_open(RelationRelationId, AccessShareLock);
	ScanKeyData key;
	ScanKeyInit(&key, Anum_pg_class_relnamespace, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(nsp));
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, nullptr, 1, &key);
	HeapTuple tuple;
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		relids = lappend_oid(relids, reinterpret_cast<Form_pg_class>(GETSTRUCT(tuple))->oid);
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	ListCell *lc;
	foreach (lc, relids)
		if (RecordedAs(lfirst_oid(lc)) == lfirst_oid(lc))
			AddTarget(frame, lfirst_oid(lc), false);
}

// Is bemi installed here, at 0.5.0 or later (whose bemi.changes takes operation 'DDL'; before
// ALTER EXTENSION bemi UPDATE the worker could not write the rows), by an earlier transaction? Not
// during its own script, nor in the rest of the transaction that creates it: the tables that
// transaction makes are, like those that existed before, part of what bemi found when it was
// installed (and its worker, starting while that transaction is open, must not write into
// partitions the same transaction made).
bool Recording() {
	Relation rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ, CStringGetDatum("bemi"));
	SysScanDesc scan = systable_beginscan(rel, ExtensionNameIndexId, true, nullptr, 1, &key);
	HeapTuple tuple = systable_getnext(scan);
	bool recording = false;
	if (HeapTupleIsValid(tuple) && !TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tuple->t_data))) {
		bool isnull;
		Datum version = heap_getattr(tuple, Anum_pg_extension_extversion, RelationGetDescr(rel), &isnull);
		int major = 0, minor = 0;
		if (!isnull && sscanf(TextDatumGetCString(version), "%d.%d", &major, &minor) == 2)
			recording = major > 0 || minor >= 5;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return recording;
}

// The frame for a statement that may change a recorded table, or nullptr. The lookups take no lock:
// the statement itself locks and checks rights next (a table changed by another session in between
// is described as that session left it).
DdlFrame *PlanDdl(PlannedStmt *pstmt, const char *query_string) {
	Node *stmt = pstmt->utilityStmt;
	// What the parse tree rules out, before any catalog lookup: a temporary or unlogged table
	// (CREATE TEMP TABLE runs often in applications), an ALTER of something else than a table.
	switch (nodeTag(stmt)) {
	case T_CreateStmt:
		if (castNode(CreateStmt, stmt)->relation->relpersistence != RELPERSISTENCE_PERMANENT)
			return nullptr;
		break;
	case T_AlterTableStmt:
		if (castNode(AlterTableStmt, stmt)->objtype != OBJECT_TABLE)
			return nullptr;
		break;
	case T_RenameStmt:
	case T_AlterObjectSchemaStmt:
	case T_DropStmt:
		break;
	case T_CreateTableAsStmt: {
		auto *ctas = castNode(CreateTableAsStmt, stmt);
		if (ctas->objtype != OBJECT_TABLE || ctas->into->rel->relpersistence != RELPERSISTENCE_PERMANENT)
			return nullptr;
		break;
	}
	default:
		return nullptr;
	}
	if (!Recording())
		return nullptr;

	auto *frame = static_cast<DdlFrame *>(palloc0(sizeof(DdlFrame)));
	switch (nodeTag(stmt)) {
	case T_CreateStmt: {
		auto *create = castNode(CreateStmt, stmt);
		if (create->relation->relpersistence != RELPERSISTENCE_PERMANENT || OidIsValid(LookUp(create->relation)))
			return nullptr; // temporary, unlogged, or IF NOT EXISTS of a table that exists
		frame->created = create->relation->relname;
		frame->created_in = RangeVarGetCreationNamespace(create->relation);
		break;
	}
	case T_CreateTableAsStmt: {
		IntoClause *into = castNode(CreateTableAsStmt, stmt)->into;
		if (into->rel->relpersistence != RELPERSISTENCE_PERMANENT || OidIsValid(LookUp(into->rel)))
			return nullptr;
		frame->created = into->rel->relname;
		frame->created_in = RangeVarGetCreationNamespace(into->rel);
		break;
	}
	case T_AlterTableStmt: {
		auto *alter = castNode(AlterTableStmt, stmt);
		if (alter->objtype != OBJECT_TABLE)
			return nullptr;
		AddTarget(frame, LookUp(alter->relation), alter->relation->inh);
		break;
	}
	case T_RenameStmt: {
		auto *rename = castNode(RenameStmt, stmt);
		if (rename->renameType == OBJECT_TABLE || rename->renameType == OBJECT_TABCONSTRAINT)
			AddTarget(frame, LookUp(rename->relation), false);
		else if (rename->renameType == OBJECT_COLUMN && rename->relationType == OBJECT_TABLE)
			AddTarget(frame, LookUp(rename->relation), rename->relation->inh);
		else if (rename->renameType == OBJECT_SCHEMA)
			AddSchemaTables(frame, rename->subname); // each table gets a new name
		break;
	}
	case T_AlterObjectSchemaStmt: {
		auto *move = castNode(AlterObjectSchemaStmt, stmt);
		if (move->objectType == OBJECT_TABLE)
			AddTarget(frame, LookUp(move->relation), false);
		break;
	}
	case T_DropStmt: {
		auto *drop = castNode(DropStmt, stmt);
		ListCell *lc;
		if (drop->removeType == OBJECT_TABLE) {
			// Inheritance children go with their parent only under CASCADE; they are recorded if gone.
			foreach (lc, drop->objects)
				AddTarget(frame, LookUp(makeRangeVarFromNameList(castNode(List, lfirst(lc)))), true);
		} else if (drop->removeType == OBJECT_SCHEMA) {
			foreach (lc, drop->objects)
				AddSchemaTables(frame, strVal(lfirst(lc)));
		}
		break;
	}
	default:
		break;
	}
	if (frame->created == nullptr && frame->targets == NIL)
		return nullptr;
	frame->tag = CreateCommandName(stmt);
	frame->statement = StatementText(pstmt, query_string);
	return frame;
}

// The signed payload of one DDL row (see session_ddl.cpp for how it is read), or nullptr when the
// target is not a row: not recorded, unchanged child, neither permanent before nor after.
const char *Payload(const DdlFrame *frame, const DdlTarget *target) {
	bool exists = SearchSysCacheExists1(RELOID, ObjectIdGetDatum(target->relid));
	if (!exists && !target->existed)
		return nullptr;
	if (exists && !target->existed && !IsUserTable(target->relid))
		return nullptr;
	bool permanent = exists && get_rel_persistence(target->relid) == RELPERSISTENCE_PERMANENT;
	if (!permanent && !target->permanent)
		return nullptr;
	const char *columns = exists ? ColumnsOf(target->relid) : nullptr;
	Oid relfilenode = exists ? RelfilenodeOf(target->relid) : InvalidOid;
	bool rewritten = exists && target->existed && OidIsValid(target->relfilenode) && relfilenode != target->relfilenode;
	if (!target->named && exists && !rewritten &&
	    (columns == nullptr || target->columns == nullptr || strcmp(columns, target->columns) == 0))
		return nullptr;
	Oid recorded_as = exists ? RecordedAs(target->relid) : target->recorded_as;

	StringInfoData buf;
	initStringInfo(&buf);
	appendStringInfoString(&buf, BEMI_DDL_PAYLOAD_TAG);
	appendStringInfoString(&buf, "{\"schema\": ");
	if (exists) {
		escape_json(&buf, get_namespace_name(get_rel_namespace(recorded_as)));
		appendStringInfoString(&buf, ", \"table\": ");
		escape_json(&buf, get_rel_name(recorded_as));
	} else {
		// Dropped: the names its changes were recorded under.
		escape_json(&buf, target->recorded_schema);
		appendStringInfoString(&buf, ", \"table\": ");
		escape_json(&buf, target->recorded_table);
	}
	appendStringInfo(&buf, ", \"table_oid\": %u, \"before\": {", recorded_as);
	if (target->existed) {
		appendStringInfoString(&buf, "\"object\": ");
		escape_json(&buf, target->object);
		if (target->columns != nullptr)
			appendStringInfo(&buf, ", \"columns\": %s", target->columns);
	}
	appendStringInfoString(&buf, "}, \"after\": {\"command_tag\": ");
	escape_json(&buf, frame->tag);
	appendStringInfoString(&buf, ", \"object\": ");
	escape_json(&buf, exists ? QualifiedName(target->relid) : target->object);
	appendStringInfoString(&buf, ", \"statement\": ");
	escape_json(&buf, frame->statement);
	if (columns != nullptr)
		appendStringInfo(&buf, ", \"columns\": %s", columns);
	if (rewritten)
		appendStringInfoString(&buf, ", \"rewritten\": true");
	appendStringInfoString(&buf, "}}");
	return buf.data;
}

// The payloads of a statement that ran, one per table it changed (List of char *).
List *Payloads(DdlFrame *frame) {
	if (frame->created != nullptr) {
		Oid relid = get_relname_relid(frame->created, frame->created_in);
		if (OidIsValid(relid) && IsUserTable(relid)) {
			auto *target = static_cast<DdlTarget *>(palloc0(sizeof(DdlTarget)));
			target->relid = relid;
			target->named = true;
			frame->targets = lappend(frame->targets, target);
		}
	}
	List *payloads = NIL;
	ListCell *lc;
	foreach (lc, frame->targets)
		if (const char *payload = Payload(frame, static_cast<DdlTarget *>(lfirst(lc))))
			payloads = lappend(payloads, const_cast<char *>(payload));
	return payloads;
}

// One signed transactional message per payload. Nothing without the server's key: an unsigned one
// would be refused by decoding anyway.
void EmitPayloads(List *payloads) {
	TransactionId top_xid = GetTopTransactionId();
	ListCell *lc;
	foreach (lc, payloads) {
		const char *payload = static_cast<const char *>(lfirst(lc));
		int len;
		char *message = BemiSignMessage(top_xid, payload, strlen(payload), &len);
		if (message == nullptr)
			return;
#if PG_VERSION_NUM >= 170000
		LogLogicalMessage(BEMI_DDL_MESSAGE_PREFIX, message, len, true, false);
#else
		LogLogicalMessage(BEMI_DDL_MESSAGE_PREFIX, message, len, true);
#endif
		pfree(message);
	}
}

} // namespace
} // namespace bemi

extern "C" void *BemiBeforeDdl(PlannedStmt *pstmt, const char *query_string) {
	return bemi::Enter([&]() -> void * {
		if (bemi_is_worker || IsBinaryUpgrade || !XLogLogicalInfoActive())
			return nullptr;
		bemi::DdlFrame *frame = bemi::PgCall([&]() { return bemi::PlanDdl(pstmt, query_string); });
		if (frame != nullptr) {
			frame->outer = bemi::top;
			bemi::top = frame;
		}
		return frame;
	});
}

extern "C" void BemiAfterDdl(void *ddl) {
	bemi::Enter([&]() {
		auto *frame = static_cast<bemi::DdlFrame *>(ddl);
		if (frame == nullptr)
			return;
		bemi::top = frame->outer;
		List *payloads = bemi::PgCall([&]() { return bemi::Payloads(frame); });
		if (payloads == NIL)
			return;
		// The transaction's context and identity first, as before a row write.
		bemi::BeforeDdlWrite();
		bemi::PgCall([&]() { bemi::EmitPayloads(payloads); });
	});
}

extern "C" void BemiAbandonDdl(void *ddl) {
	auto *frame = static_cast<bemi::DdlFrame *>(ddl);
	if (frame != nullptr)
		bemi::top = frame->outer;
}
