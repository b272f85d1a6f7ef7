// protect.cpp: the trail cannot be dropped or edited silently (issue 15), checked in every backend.
//
// The trail is bemi.changes with its partitions, bemi.chain_anchors, and bemi.gaps. Three checks, each in a place no
// SQL switches off (a trigger can be disabled, session_replication_role = replica skips triggers;
// these are hooks of bemi.so):
// - Drops: the object access hook (OAT_DROP) sees every object about to be dropped, from any
//   statement (DROP EXTENSION, DROP SCHEMA ... CASCADE, DROP OWNED, DROP TABLE, a drop cascading
//   from anything else). A table of schema bemi, the schema or the extension is refused while
//   bemi.changes holds changes, unless the session set bemi.allow_drop. ProcessUtility refuses the
//   statements that would take the trail away without dropping it: DETACH PARTITION, DROP COLUMN,
//   ALTER COLUMN TYPE, SET UNLOGGED, SET SCHEMA or RENAME of bemi's tables, RENAME of schema bemi.
//   DROP DATABASE of a database bemi records is refused too (its trail cannot be counted from
//   another database), unless bemi.allow_drop. Such a statement on a table of the trail that
//   does not drop it (DETACH, ...) is then recorded in bemi.gaps.
// - Writes: ExecutorStart refuses INSERT, UPDATE, DELETE and MERGE of bemi.changes (and its
//   partitions) and UPDATE, DELETE, MERGE of bemi.gaps, from any statement (a view, a function, a
//   rule, a DO block); ProcessUtility refuses TRUNCATE of either and COPY into bemi.changes. One
//   exception: a role granted bemi_ingest (membership itself, not a superuser's reach) may append
//   to bemi.changes by plain INSERT or COPY: on a destination, the source's worker (issue 16).
//   bemi.allow_trail_changes lets a superuser's session do it, and each such statement is then
//   recorded in bemi.gaps (RecordTrailGap), in the statement's own transaction.
// - A session with bemi.allow_trail_changes on edits the trail itself (a restore, a repair): its
//   own changes are left out of the trail (its WAL carries the DoNotReplicate origin, see
//   BemiAllowTrailChangesAssign) and each table it writes is named once per transaction in
//   bemi.gaps instead. A plain pg_restore's loads are then not recorded as new changes on top of
//   the restored history (they raced its setval of bemi.changes_id_seq).
// - bemi's own code is exempt: the worker (it writes the trail and runs retention), bemi's
//   retention functions when called by a superuser (bemi._maintain_changes and
//   bemi._make_partition, marked by the fmgr hook while they run), and bemi's own extension
//   scripts (CREATE / ALTER EXTENSION bemi UPDATE).
//
// Cost: a write statement compares its result relations' schema with schema bemi's OID (cached;
// one syscache lookup per result relation); only a write into schema bemi looks further. A drop
// looks up the dropped relation's schema. Counting the trail happens only when a drop is refused.
#include "protect.hpp"
#include "ddl_guard.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <string>
#include <vector>

#include "bemi/guard.hpp"

extern "C" {
#include "bemi/bemi.h"
#include "bemi/context.h"
#include "bemi/protect.h"
#include "bemi/registry.h"
#include "bemi/settings.h"

#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "parser/parsetree.h"
#include "replication/origin.h"
#include "tcop/cmdtag.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/snapmgr.h"
}

namespace bemi {
namespace {

// Schema bemi's OID, looked up once and forgotten when pg_namespace changes.
Oid cached_namespace = InvalidOid;
bool namespace_known = false;

// The command tag of the utility statement running (set before each one runs), for messages.
const char *current_command = nullptr;

// bemi's retention functions running in this backend (the fmgr hook counts them).
int retention_depth = 0;

// Their OIDs, looked up once and forgotten when pg_proc changes.
Oid maintain_oid = InvalidOid, make_partition_oid = InvalidOid;
bool functions_known = false;

// The tables this transaction wrote under bemi.allow_trail_changes, already named in bemi.gaps.
std::vector<Oid> unrecorded;

enum class Trail {
	None,    // not a table of schema bemi
	Changes, // bemi.changes or one of its partitions
	Anchors, // bemi.chain_anchors: as bemi.changes, but never a bemi_ingest role's to append to
	Gaps,    // bemi.gaps
	Other,   // another table of schema bemi (rules, progress, retention, tracking, ...)
};

// The raw helpers below call PostgreSQL and own nothing: they are called only inside PgCall.

Oid BemiNamespace() {
	if (!namespace_known) {
		cached_namespace = get_namespace_oid("bemi", true);
		namespace_known = true;
	}
	return cached_namespace;
}

Trail Classify(Oid relid) {
	Oid nsp = BemiNamespace();
	if (!OidIsValid(nsp) || !OidIsValid(relid) || get_rel_namespace(relid) != nsp)
		return Trail::None;
	char kind = get_rel_relkind(relid);
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		return Trail::None;
	Oid changes = get_relname_relid("changes", nsp);
	if (relid == changes)
		return Trail::Changes;
	if (get_rel_relispartition(relid) && list_member_oid(get_partition_ancestors(relid), changes))
		return Trail::Changes;
	if (relid == get_relname_relid("gaps", nsp))
		return Trail::Gaps;
	// The chain's anchors are the trail too: a forged anchor would hide a removed change.
	if (relid == get_relname_relid("chain_anchors", nsp))
		return Trail::Anchors;
	return Trail::Other;
}

// A table whose changes bemi records (ddl_guard's rule), and permanent.
bool Recordable(Oid relid) {
	return OidIsValid(relid) && IsUserTable(relid) && get_rel_persistence(relid) == RELPERSISTENCE_PERMANENT;
}

// The changes bemi.changes holds, as this command sees them, counted up to `limit`.
int64 TrailChanges(int64 limit) {
	Oid nsp = BemiNamespace();
	Oid changes = OidIsValid(nsp) ? get_relname_relid("changes", nsp) : InvalidOid;
	if (!OidIsValid(changes))
		return 0;
	int64 n = 0;
	Snapshot snapshot = RegisterSnapshot(GetLatestSnapshot());
	ListCell *lc;
	foreach (lc, find_all_inheritors(changes, AccessShareLock, nullptr)) {
		Relation rel = table_open(lfirst_oid(lc), NoLock);
		if (rel->rd_rel->relkind == RELKIND_RELATION) {
			TupleTableSlot *slot = table_slot_create(rel, nullptr);
			TableScanDesc scan = table_beginscan(rel, snapshot, 0, nullptr);
			while (table_scan_getnextslot(scan, ForwardScanDirection, slot)) {
				if (++n >= limit)
					break;
			}
			table_endscan(scan);
			ExecDropSingleTupleTableSlot(slot);
		}
		table_close(rel, NoLock);
		if (n >= limit)
			break;
	}
	UnregisterSnapshot(snapshot);
	return n;
}

const char *RelationName(Oid relid) {
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

// Running bemi's own extension script (CREATE EXTENSION bemi, ALTER EXTENSION bemi UPDATE)?
bool InBemiScript() {
	return creating_extension && CurrentExtensionObject == get_extension_oid("bemi", true);
}

// bemi's own code, which keeps the trail: the worker, its retention functions, its scripts.
bool Exempt() {
	return bemi_is_worker || retention_depth > 0 || IsBinaryUpgrade ||
	       (creating_extension && PgCall([]() { return InBemiScript(); }));
}

// A role granted bemi_ingest (not merely a superuser): on a destination, the role a source's
// worker logs in as, which may append to bemi.changes and nothing else (issue 16).
bool Ingests() {
	Oid ingest = get_role_oid("bemi_ingest", true);
	return OidIsValid(ingest) && is_member_of_role_nosuper(GetUserId(), ingest);
}

// A drop or dismantling of the trail while it holds changes, without bemi.allow_drop: refused
// with what is at stake.
// Returns true when the statement goes ahead only because of bemi.allow_drop (the trail holds
// changes): then the caller records it where it can.
bool RefuseUnlessAllowedToDrop(const std::string &what) {
	if (PgCall([]() { return TrailChanges(1); }) == 0)
		return false;
	if (bemi_allow_drop)
		return true;
	// Counted for the message, but a refusal must not read a huge trail to the end.
	constexpr int64 kCountLimit = 1000000;
	int64 n = PgCall([]() { return TrailChanges(kCountLimit); });
	std::string held = n >= kCountLimit ? "more than 1,000,000 recorded changes"
	                                    : fmt::format("{} recorded change{}", n, n == 1 ? "" : "s");
	throw Error(
	    ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
	    fmt::format("{} would drop bemi's audit trail", current_command ? current_command : "this statement"),
	    fmt::format("It {}; bemi.changes holds {}, which would be lost.", what, held),
	    "Export the trail first if you need it. A superuser who means it sets bemi.allow_drop = on for "
	    "the session, then runs the statement again.");
}

// The statement kind a refused or recorded write is named by.
const char *WriteName(const PlannedStmt *pstmt, CmdType operation) {
	if (operation == CMD_SELECT || pstmt->hasModifyingCTE)
		return operation == CMD_SELECT ? "a data-modifying WITH" : "a statement with a data-modifying WITH";
	switch (operation) {
	case CMD_INSERT:
		return "INSERT";
	case CMD_UPDATE:
		return "UPDATE";
	case CMD_DELETE:
		return "DELETE";
#if PG_VERSION_NUM >= 150000
	case CMD_MERGE:
		return "MERGE";
#endif
	default:
		return "a write";
	}
}

// A write of the trail: refused unless bemi.allow_trail_changes, then recorded.
void TrailWrite(Oid relid, const char *what, const PlannedStmt *pstmt, const char *query_string) {
	const char *name = PgCall([&]() { return RelationName(relid); });
	if (!bemi_allow_trail_changes)
		throw Error(ERRCODE_INSUFFICIENT_PRIVILEGE,
		            fmt::format("{} of {} is refused: it is bemi's audit trail", what, name),
		            "bemi.changes (with its partitions), bemi.chain_anchors and bemi.gaps change only through bemi's worker and "
		            "retention, for every role, superusers included.",
		            "A superuser who means it sets bemi.allow_trail_changes = on for the session; each "
		            "statement that then modifies the trail is recorded in bemi.gaps.");
	RecordTrailGap(
	    relid, pstmt, query_string,
	    fmt::format("{} of the trail ({}) with bemi.allow_trail_changes on: the trail may no longer "
	                "show what happened",
	                what, name));
}

// A write of a recorded table by a session with bemi.allow_trail_changes on: left out of the
// trail (the session's origin), so named in bemi.gaps, once per table and transaction.
void UnrecordedWrite(Oid relid, const char *what, const PlannedStmt *pstmt, const char *query_string) {
	if (std::find(unrecorded.begin(), unrecorded.end(), relid) != unrecorded.end())
		return;
	const char *name = PgCall([&]() { return RelationName(relid); });
	RecordTrailGap(relid, pstmt, query_string,
	               fmt::format("{} of {} by a session with bemi.allow_trail_changes on: its changes are not "
	                           "recorded",
	                           what, name));
	unrecorded.push_back(relid);
}

// The first result relation of a write statement that belongs to the trail and that this write
// may not touch: bemi.changes for any write, bemi.gaps for anything but a plain INSERT.
struct Target {
	Oid relid;
};

Target FindTrailTarget(const PlannedStmt *pstmt, CmdType operation) {
	bool plain_insert = operation == CMD_INSERT && !pstmt->hasModifyingCTE;
	if (plain_insert && pstmt->planTree && IsA(pstmt->planTree, ModifyTable) &&
	    castNode(ModifyTable, pstmt->planTree)->onConflictAction == ONCONFLICT_UPDATE)
		plain_insert = false;
	ListCell *lc;
	foreach (lc, pstmt->resultRelations) {
		Oid relid = rt_fetch(lfirst_int(lc), pstmt->rtable)->relid;
		Trail trail = Classify(relid);
		// A bemi_ingest role appends to bemi.changes (a source's worker writing to its
		// destination): its role lookup only for a write of bemi.changes, not for every INSERT.
		if ((trail == Trail::Changes && !(plain_insert && Ingests())) || trail == Trail::Anchors ||
		    (trail == Trail::Gaps && !plain_insert))
			return {relid};
	}
	return {InvalidOid};
}

// Does this ALTER TABLE take rows or columns away from the table, or the table away from the
// trail? (From the parse tree.)
bool AlterDismantles(const AlterTableStmt *stmt) {
	ListCell *lc;
	foreach (lc, stmt->cmds) {
		switch (lfirst_node(AlterTableCmd, lc)->subtype) {
		case AT_DetachPartition:
#if PG_VERSION_NUM >= 140000
		case AT_DetachPartitionFinalize:
#endif
		case AT_DropColumn:
		case AT_AlterColumnType:
		case AT_DropInherit:
		case AT_SetUnLogged: // a crash would empty it
			return true;
		default:
			break;
		}
	}
	return false;
}

// The table of schema bemi a utility statement would dismantle (InvalidOid if none), and whether
// it is schema bemi itself that is renamed.
struct Dismantled {
	Oid relid;
	bool schema;
};

Dismantled LookUpDismantled(Node *stmt) {
	Dismantled out = {InvalidOid, false};
	RangeVar *rv = nullptr;
	if (IsA(stmt, AlterTableStmt)) {
		auto *alter = castNode(AlterTableStmt, stmt);
		if (AlterDismantles(alter))
			rv = alter->relation;
	} else if (IsA(stmt, AlterObjectSchemaStmt)) {
		rv = castNode(AlterObjectSchemaStmt, stmt)->relation;
	} else if (IsA(stmt, RenameStmt)) {
		auto *rename = castNode(RenameStmt, stmt);
		if (rename->renameType == OBJECT_SCHEMA)
			out.schema = strcmp(rename->subname, "bemi") == 0;
		else
			rv = rename->relation;
	}
	if (rv != nullptr) {
		Oid relid = RangeVarGetRelid(rv, NoLock, true);
		if (Classify(relid) != Trail::None)
			out.relid = relid;
	}
	return out;
}

} // namespace

void GuardTrailUtility(PlannedStmt *pstmt, const char *query_string) {
	Node *stmt = pstmt->utilityStmt;
	current_command = PgCall([&]() { return GetCommandTagName(CreateCommandTag(stmt)); });
	if (IsA(stmt, TruncateStmt)) {
		if (Exempt())
			return;
		ListCell *lc;
		foreach (lc, castNode(TruncateStmt, stmt)->relations) {
			auto *rv = lfirst_node(RangeVar, lc);
			Oid relid = PgCall([&]() {
				Oid r = RangeVarGetRelid(rv, NoLock, true);
				Trail trail = Classify(r);
				// A role without the right hears PostgreSQL's own refusal next.
				bool trail_table = trail == Trail::Changes || trail == Trail::Anchors || trail == Trail::Gaps;
				return trail_table && pg_class_aclcheck(r, GetUserId(), ACL_TRUNCATE) == ACLCHECK_OK
				           ? r
				           : InvalidOid;
			});
			if (OidIsValid(relid))
				TrailWrite(relid, "TRUNCATE", pstmt, query_string);
			else if (bemi_allow_trail_changes) {
				Oid user_relid = PgCall([&]() {
					Oid r = RangeVarGetRelid(rv, NoLock, true);
					return Recordable(r) ? r : InvalidOid;
				});
				if (OidIsValid(user_relid))
					UnrecordedWrite(user_relid, "TRUNCATE", pstmt, query_string);
			}
		}
	} else if (IsA(stmt, CopyStmt)) {
		auto *copy = castNode(CopyStmt, stmt);
		if (!copy->is_from || copy->relation == nullptr || Exempt())
			return;
		Oid relid = PgCall([&]() {
			Oid r = RangeVarGetRelid(copy->relation, NoLock, true);
			// A bemi_ingest role's COPY appends (a source's worker writing to its destination).
			Trail trail = Classify(r);
			return ((trail == Trail::Changes && !Ingests()) || trail == Trail::Anchors) &&
			               pg_class_aclcheck(r, GetUserId(), ACL_INSERT) == ACLCHECK_OK
			           ? r
			           : InvalidOid;
		});
		if (OidIsValid(relid))
			TrailWrite(relid, "COPY", pstmt, query_string);
		else if (bemi_allow_trail_changes) {
			Oid user_relid = PgCall([&]() {
				Oid r = RangeVarGetRelid(copy->relation, NoLock, true);
				return Recordable(r) ? r : InvalidOid;
			});
			if (OidIsValid(user_relid))
				UnrecordedWrite(user_relid, "COPY", pstmt, query_string);
		}
	} else if (IsA(stmt, AlterTableStmt) || IsA(stmt, AlterObjectSchemaStmt) || IsA(stmt, RenameStmt)) {
		if (IsA(stmt, AlterTableStmt) && !AlterDismantles(castNode(AlterTableStmt, stmt)))
			return;
		Dismantled target = PgCall([&]() { return LookUpDismantled(stmt); });
		if ((!OidIsValid(target.relid) && !target.schema) || Exempt())
			return;
		std::string what = target.schema ? std::string("renames schema bemi")
		                                 : fmt::format("takes rows or columns of {} out of the trail",
		                                               PgCall([&]() { return RelationName(target.relid); }));
		// Allowed: recorded, unless it is schema bemi that is renamed (the gap row would go
		// to a table under another name; the rename itself is visible in the catalog).
		if (RefuseUnlessAllowedToDrop(what) && OidIsValid(target.relid))
			RecordTrailGap(target.relid, pstmt, query_string,
			               fmt::format("{} with bemi.allow_drop on: it {}", current_command, what));
	}
}

} // namespace bemi

extern "C" void BemiGuardTrailWrites(PlannedStmt *pstmt, const char *source_text, CmdType operation) {
	bemi::Enter([&]() {
		if (pstmt->resultRelations == NIL || bemi::Exempt())
			return;
		bemi::Target target = bemi::PgCall([&]() { return bemi::FindTrailTarget(pstmt, operation); });
		if (OidIsValid(target.relid))
			bemi::TrailWrite(target.relid, bemi::WriteName(pstmt, operation), pstmt, source_text);
		if (!bemi_allow_trail_changes)
			return;
		List *tables = bemi::PgCall([&]() {
			List *out = NIL;
			ListCell *lc;
			foreach (lc, pstmt->resultRelations) {
				Oid relid = rt_fetch(lfirst_int(lc), pstmt->rtable)->relid;
				if (bemi::Recordable(relid))
					out = lappend_oid(out, relid);
			}
			return out;
		});
		ListCell *lc;
		foreach (lc, tables)
			bemi::UnrecordedWrite(lfirst_oid(lc), bemi::WriteName(pstmt, operation), pstmt, source_text);
	});
}

extern "C" void BemiGuardDrop(Oid class_id, Oid object_id) {
	bemi::Enter([&]() {
		// With bemi.allow_drop the drop goes ahead (and is not recorded: bemi.gaps may go with it).
		if (bemi_allow_drop || bemi_is_worker || bemi::retention_depth > 0 || IsBinaryUpgrade)
			return;
		const char *what = bemi::PgCall([&]() -> const char * {
			if (class_id == RelationRelationId)
				return bemi::Classify(object_id) != bemi::Trail::None
				           ? psprintf("drops %s", bemi::RelationName(object_id))
				           : nullptr;
			if (class_id == NamespaceRelationId)
				return object_id == bemi::BemiNamespace() ? "drops schema bemi" : nullptr;
			if (class_id == ExtensionRelationId)
				return object_id == get_extension_oid("bemi", true) ? "drops extension bemi" : nullptr;
			return nullptr;
		});
		if (what == nullptr || bemi::Exempt())
			return;
		bemi::RefuseUnlessAllowedToDrop(what);
	});
}

extern "C" void BemiGuardDropDatabase(const char *dbname) {
	bemi::Enter([&]() {
		if (bemi_allow_drop || bemi_is_worker)
			return;
		// Another database's trail cannot be counted from here: one bemi records is refused.
		bool recorded = bemi::PgCall([&]() {
			Oid dboid = get_database_oid(dbname, true);
			BemiDatabase *db = OidIsValid(dboid) ? BemiFindDatabase(dboid) : nullptr;
			return db != nullptr && db->state != BEMI_UNUSED && db->state != BEMI_STOPPING;
		});
		if (recorded)
			throw bemi::Error(
			    ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST, "DROP DATABASE would drop bemi's audit trail",
			    fmt::format("bemi records the changes of database \"{}\"; its trail (bemi.changes) "
			                "would be lost with it.",
			                dbname),
			    "Export the trail first if you need it. A superuser who means it sets bemi.allow_drop = "
			    "on for the session (or drops the extension first, which asks the same), then runs the "
			    "statement again.");
	});
}

extern "C" void BemiRetentionCall(Oid fn_oid, bool start) {
	bemi::Enter([&]() {
		// At the end of a call no lookup is made (it may be an abort): the OIDs are those of its start.
		if (start && !bemi::functions_known)
			bemi::PgCall([]() {
				Oid nsp = bemi::BemiNamespace();
				bemi::maintain_oid = bemi::make_partition_oid = InvalidOid;
				if (OidIsValid(nsp)) {
					Oid ts[2] = {TIMESTAMPTZOID, TIMESTAMPTZOID};
					bemi::maintain_oid = GetSysCacheOid3(
					    PROCNAMEARGSNSP, Anum_pg_proc_oid, CStringGetDatum("_maintain_changes"),
					    PointerGetDatum(buildoidvector(ts, 1)), ObjectIdGetDatum(nsp));
					bemi::make_partition_oid =
					    GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid, CStringGetDatum("_make_partition"),
					                    PointerGetDatum(buildoidvector(ts, 2)), ObjectIdGetDatum(nsp));
				}
				bemi::functions_known = true;
			});
		if (!OidIsValid(fn_oid) || (fn_oid != bemi::maintain_oid && fn_oid != bemi::make_partition_oid))
			return;
		if (start)
			bemi::retention_depth++;
		else if (bemi::retention_depth > 0)
			bemi::retention_depth--;
	});
}

extern "C" void BemiProtectForget(bool namespaces, bool functions) {
	if (namespaces)
		bemi::namespace_known = false;
	if (functions || namespaces)
		bemi::functions_known = false;
}

extern "C" void BemiProtectReset(bool abort) {
	if (abort)
		bemi::retention_depth = 0;
	bemi::unrecorded.clear();
}

extern "C" bool BemiAllowTrailChangesCheck(bool value, int source) {
	// Per session only: in postgresql.conf, ALTER SYSTEM, ALTER DATABASE / ROLE ... SET it would
	// leave every session's changes out of the trail.
	switch (source) {
	case PGC_S_ARGV:
	case PGC_S_GLOBAL:
	case PGC_S_DATABASE:
	case PGC_S_USER:
	case PGC_S_DATABASE_USER:
	case PGC_S_FILE:
	case PGC_S_ENV_VAR:
		return !value;
	default:
		return true;
	}
}

extern "C" void BemiAllowTrailChangesAssign(bool value) {
	// Never take over an origin someone set up (logical replication's apply, a writer's).
	if (value && replorigin_session_origin == InvalidRepOriginId)
		replorigin_session_origin = DoNotReplicateId;
	else if (!value && replorigin_session_origin == DoNotReplicateId && !bemi_is_worker)
		replorigin_session_origin = InvalidRepOriginId;
}
