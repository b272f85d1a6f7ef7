// ddl_guard.cpp: DDL on a recorded table, checked in the backend that runs it, before it runs.
//
// A table owner must not be able to change data without a trace. Three statements would let her:
// - REPLICA IDENTITY other than FULL makes before-images incomplete (a DELETE with no key and an
//   empty before-image): refused while bemi.replica_identity_full is on (only a superuser can turn
//   it off; bemi_status() then lists the table in incomplete_image_tables).
// - SET UNLOGGED, or an unlogged table becoming a partition of a recorded one, takes the table's
//   later writes out of the WAL, so out of the trail: allowed, and recorded in bemi.gaps. SET LOGGED
//   records a second gap row saying capture resumes (what changed in between is not in the trail),
//   and puts REPLICA IDENTITY FULL on the table first, as the event trigger does for new tables.
// - ALTER COLUMN ... TYPE rewrites every value of the column (USING can put anything there) with no
//   row change in the WAL: allowed, and recorded in bemi.gaps with the statement.
//
// The gap rows are written before the statement runs, in its own (sub)transaction: if the ALTER
// fails or is rolled back, its gap row goes with it. They are written as the extension's owner
// under a restricted security context, with a pinned search_path and parameters only, so the caller
// needs no right on bemi.gaps and can put nothing there but the facts of her own statement.
//
// The decisions are C++ (GuardAlterTable, GuardCreatePartition); the catalog lookups and the
// writes are plain PostgreSQL code, each group in one PgCall. Cost: statements without one of
// these subcommands return after a walk over their command list, without a catalog lookup and
// without allocating. Only the rare ones look for the extension and the table.
#include "ddl_guard.hpp"

#include <fmt/format.h>
#include <string>
#include <string_view>
#include <vector>

#include "bemi/glob.h" // the guard matches names as decoding does
#include "bemi/guard.hpp"

extern "C" {
#include "bemi/context.h"
#include "bemi/settings.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xlog.h"
#include "catalog/catalog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/tablecmds.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/syscache.h"
}

namespace bemi {
namespace {

// Longest statement text kept in a gap row, in bytes.
constexpr int kGapStatementMax = 2000;

// What one ALTER TABLE asks for, as far as the guard cares. Read from the parse tree alone: no
// catalog access, and no allocation for a statement with none of these subcommands.
struct AlterIntent {
	bool replica_identity = false; // REPLICA IDENTITY other than FULL
	char identity_type = 0;        // the last one asked for
	bool set_logged = false;
	bool set_unlogged = false;
	std::vector<const char *> retyped_columns; // ALTER COLUMN ... TYPE
	std::vector<RangeVar *> attached;          // ATTACH PARTITION
	std::vector<RangeVar *> detached;          // DETACH PARTITION [CONCURRENTLY]

	explicit AlterIntent(const AlterTableStmt *stmt) {
		ListCell *lc;
		foreach (lc, stmt->cmds) {
			AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);
			switch (cmd->subtype) {
			case AT_ReplicaIdentity: {
				auto *ri = reinterpret_cast<ReplicaIdentityStmt *>(cmd->def);
				if (ri->identity_type != REPLICA_IDENTITY_FULL) {
					replica_identity = true;
					identity_type = ri->identity_type;
				}
				break;
			}
			case AT_SetLogged:
				set_logged = true;
				break;
			case AT_SetUnLogged:
				set_unlogged = true;
				break;
			case AT_AlterColumnType:
				retyped_columns.push_back(cmd->name);
				break;
			case AT_AttachPartition:
				attached.push_back(reinterpret_cast<PartitionCmd *>(cmd->def)->name);
				break;
			case AT_DetachPartition:
				detached.push_back(reinterpret_cast<PartitionCmd *>(cmd->def)->name);
				break;
			default:
				break;
			}
		}
	}

	bool Any() const {
		return replica_identity || set_logged || set_unlogged || !retyped_columns.empty() ||
		       !attached.empty() || !detached.empty();
	}
};

// The table a gap row is about, and the facts the row records. Plain values (palloc'd strings), as
// PgCall returns them; relid is InvalidOid when the statement is not about a table bemi records.
struct GapTarget {
	Oid ext_owner = InvalidOid;
	Oid relid = InvalidOid;
	bool permanent = false;
	char kind = 0;
	const char *name = nullptr;      // schema.table, quoted as needed
	const char *parent = nullptr;    // a partition's parent, named so; null for any other table
	const char *role = nullptr;      // who runs the statement
	const char *statement = nullptr; // its text, clipped
};

// The helpers below are raw PostgreSQL and own nothing: they are called only inside PgCall.

// The bemi extension of this database and its owner; InvalidOid when there is none.
Oid BemiExtensionOwner() {
	Relation rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ, CStringGetDatum("bemi"));
	SysScanDesc scan = systable_beginscan(rel, ExtensionNameIndexId, true, nullptr, 1, &key);
	HeapTuple tuple = systable_getnext(scan);
	Oid owner = HeapTupleIsValid(tuple) ? reinterpret_cast<Form_pg_extension>(GETSTRUCT(tuple))->extowner
	                                    : InvalidOid;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}

// pg_class.relreplident, which lsyscache has no getter for.
char ReplicaIdentityOf(Oid relid) {
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	char identity = reinterpret_cast<Form_pg_class>(GETSTRUCT(tuple))->relreplident;
	ReleaseSysCache(tuple);
	return identity;
}

// schema.table, quoted as needed: how gap rows and messages name a table.
const char *QualifiedName(Oid relid) {
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

// The text of this statement alone (the query string may hold several), clipped to a sane size.
const char *StatementText(const PlannedStmt *pstmt, const char *query_string) {
	if (query_string == nullptr)
		return nullptr;
	int location = pstmt->stmt_location;
	if (location < 0 || location > static_cast<int>(strlen(query_string)))
		location = 0;
	int len = strlen(query_string + location);
	if (pstmt->stmt_len > 0 && pstmt->stmt_len < len)
		len = pstmt->stmt_len;
	if (len > kGapStatementMax) {
		len = pg_mbcliplen(query_string + location, len, kGapStatementMax);
		return psprintf("%.*s...", len, query_string + location);
	}
	return pnstrdup(query_string + location, len);
}

// A recorded table `relid` as the target of this statement's gap rows.
GapTarget TargetOf(Oid ext_owner, Oid relid, const PlannedStmt *pstmt, const char *query_string) {
	GapTarget target;
	target.ext_owner = ext_owner;
	target.relid = relid;
	target.permanent = get_rel_persistence(relid) == RELPERSISTENCE_PERMANENT;
	target.kind = get_rel_relkind(relid);
	target.name = QualifiedName(relid);
	// A partition's changes are recorded under its root's name: gap rows say which table it is part of.
	if (target.kind == RELKIND_RELATION && get_rel_relispartition(relid))
		target.parent = QualifiedName(get_partition_parent(relid, false));
	target.role = GetUserNameFromId(GetUserId(), false);
	target.statement = StatementText(pstmt, query_string);
	return target;
}

// The table an ALTER TABLE is about, when bemi records it. The lookup is the one ALTER TABLE
// itself makes next (same lock, same permission check): no new error.
GapTarget LookUpAltered(AlterTableStmt *stmt, const PlannedStmt *pstmt, const char *query_string) {
	Oid ext_owner = BemiExtensionOwner();
	if (!OidIsValid(ext_owner))
		return GapTarget();
	Oid relid = AlterTableLookupRelation(stmt, AlterTableGetLockLevel(stmt->cmds));
	if (!OidIsValid(relid) || !IsUserTable(relid))
		return GapTarget();
	return TargetOf(ext_owner, relid, pstmt, query_string);
}

// The recorded, permanent parent of a CREATE UNLOGGED TABLE ... PARTITION OF.
GapTarget LookUpParent(CreateStmt *stmt, const PlannedStmt *pstmt, const char *query_string) {
	Oid ext_owner = BemiExtensionOwner();
	if (!OidIsValid(ext_owner))
		return GapTarget();
	Oid parent = RangeVarGetRelid(linitial_node(RangeVar, stmt->inhRelations), NoLock, true);
	if (!OidIsValid(parent) || !IsUserTable(parent) ||
	    get_rel_persistence(parent) != RELPERSISTENCE_PERMANENT)
		return GapTarget();
	return TargetOf(ext_owner, parent, pstmt, query_string);
}

// Does bemi.gaps have the columns of 0.2.0 (relation, table_oid, role, statement)? Not while the
// database's SQL is still 0.1.0, between `make install` and ALTER EXTENSION bemi UPDATE.
bool GapsHaveRelation() {
	Oid bemi_schema = get_namespace_oid("bemi", true);
	Oid gaps = OidIsValid(bemi_schema) ? get_relname_relid("gaps", bemi_schema) : InvalidOid;
	return OidIsValid(gaps) && get_attnum(gaps, "relation") != InvalidAttrNumber;
}

// The caller's identity, put back after a gap row is written as the extension's owner.
struct SavedIdentity {
	Oid userid;
	int sec_context;
	int guc_nest_level;
};

SavedIdentity BecomeExtensionOwner(Oid ext_owner) {
	SavedIdentity saved;
	GetUserIdAndSecContext(&saved.userid, &saved.sec_context);
	SetUserIdAndSecContext(ext_owner,
	                       saved.sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	saved.guc_nest_level = NewGUCNestLevel();
	return saved;
}

void RestoreIdentity(const SavedIdentity &saved) {
	AtEOXact_GUC(false, saved.guc_nest_level);
	SetUserIdAndSecContext(saved.userid, saved.sec_context);
}

// The row, as the extension's owner: parameters only, fully qualified table, search_path pinned;
// SPI nests, so this works from a function's EXECUTE too.
void InsertGap(const GapTarget &target, const char *reason) {
	Oid types[7] = {PG_LSNOID, PG_LSNOID, TEXTOID, TEXTOID, OIDOID, TEXTOID, TEXTOID};
	Datum args[7];
	char nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	XLogRecPtr now_lsn = GetXLogInsertRecPtr();

	args[0] = LSNGetDatum(now_lsn);
	args[1] = LSNGetDatum(now_lsn);
	args[2] = CStringGetTextDatum(reason);
	args[3] = CStringGetTextDatum(target.name);
	args[4] = ObjectIdGetDatum(target.relid);
	args[5] = CStringGetTextDatum(target.role);
	if (target.statement)
		args[6] = CStringGetTextDatum(target.statement);
	else
		nulls[6] = 'n';

	(void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
	                        true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "bemi: SPI_connect failed");
	if (SPI_execute_with_args(
	        GapsHaveRelation()
	            ? "INSERT INTO bemi.gaps (from_lsn, to_lsn, reason, relation, table_oid, role, statement)"
	              " VALUES ($1, $2, $3, $4, $5, $6, $7)"
	            // 0.1.0's bemi.gaps: the facts go into the reason.
	            : "INSERT INTO bemi.gaps (from_lsn, to_lsn, reason) VALUES ($1, $2,"
	              " pg_catalog.format('%s (table %s, OID %s, role %s, statement: %s)',"
	              " $3, $4, $5, $6, COALESCE($7, '')))",
	        7, types, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "bemi: could not record a gap in bemi.gaps");
	SPI_finish();
}

// Before an unlogged table becomes logged: give it REPLICA IDENTITY FULL, as new tables get.
// Runs as the caller, who owns the table (SET LOGGED needs that too); the guard never refuses
// FULL. In the SET LOGGED statement's transaction, so undone with it.
void PutFullReplicaIdentity(const GapTarget &target) {
	if (ReplicaIdentityOf(target.relid) == REPLICA_IDENTITY_FULL)
		return;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "bemi: SPI_connect failed");
	if (SPI_execute(psprintf("ALTER TABLE %s REPLICA IDENTITY FULL", target.name), false, 0) !=
	    SPI_OK_UTILITY)
		elog(ERROR, "bemi: could not set REPLICA IDENTITY FULL on %s", target.name);
	SPI_finish();
}

// One row in bemi.gaps, written as the extension's owner: the caller has no right on bemi.gaps and
// gets none. Her identity comes back however the write ends (on an error, before it goes on to
// abort the statement).
void RecordGap(const GapTarget &target, const std::string &reason) {
	SavedIdentity saved = PgCall([&]() { return BecomeExtensionOwner(target.ext_owner); });
	try {
		PgCall([&]() { InsertGap(target, reason.c_str()); });
	} catch (...) {
		PgCall([&]() { RestoreIdentity(saved); });
		throw;
	}
	PgCall([&]() { RestoreIdentity(saved); });
}

// The replica identity as ALTER TABLE spells it, for the refusal's detail.
const char *IdentityName(char identity_type) {
	switch (identity_type) {
	case REPLICA_IDENTITY_NOTHING:
		return "NOTHING";
	case REPLICA_IDENTITY_INDEX:
		return "USING INDEX";
	default:
		return "DEFAULT";
	}
}

// ATTACH / DETACH that move a partition between roots with different rules (below).
void GuardPartitionMoves(const AlterIntent &intent, const GapTarget &parent, const PlannedStmt *pstmt,
                         const char *query_string);

// ALTER TABLE on a recorded table: refuse an incomplete replica identity, record the rest. The
// table's state before the statement decides (it has not run yet); a statement that both sets
// LOGGED and changes replica identity is judged as on the permanent table it makes.
void GuardAlterTable(AlterTableStmt *stmt, PlannedStmt *pstmt, const char *query_string) {
	AlterIntent intent(stmt);
	if (!intent.Any())
		return;
	GapTarget table = PgCall([&]() { return LookUpAltered(stmt, pstmt, query_string); });
	if (!OidIsValid(table.relid))
		return;
	bool will_be_permanent = (table.permanent && !intent.set_unlogged) || intent.set_logged;

	if (intent.replica_identity && will_be_permanent && bemi_replica_identity_full)
		throw Error(
		    ERRCODE_INSUFFICIENT_PRIVILEGE,
		    fmt::format("bemi records complete images: table {} must keep REPLICA IDENTITY FULL", table.name),
		    fmt::format("With REPLICA IDENTITY {} an UPDATE or DELETE would be recorded without its "
		                "complete before-image.",
		                IdentityName(intent.identity_type)),
		    "A superuser may set bemi.replica_identity_full = off to manage replica identity; "
		    "bemi_status() then lists the table in incomplete_image_tables.");

	// SET UNLOGGED on a partitioned table changes nothing (PostgreSQL 15): only plain tables count.
	if (table.kind == RELKIND_RELATION) {
		std::string of = table.parent ? fmt::format(" (a partition of {})", table.parent) : "";
		if (intent.set_unlogged && table.permanent)
			RecordGap(
			    table,
			    fmt::format("SET UNLOGGED: changes to this table{} are not recorded until it is SET LOGGED",
			                of));
		else if (intent.set_logged && !table.permanent) {
			if (bemi_replica_identity_full)
				PgCall([&]() { PutFullReplicaIdentity(table); });
			RecordGap(table,
			          fmt::format("SET LOGGED: capture of this table{} resumes; changes made while it was "
			                      "unlogged, and the rows it holds now, are not in the trail",
			                      of));
		}
	}

	if (!intent.retyped_columns.empty() && (table.permanent || will_be_permanent)) {
		std::string reason = "ALTER COLUMN TYPE rewrote every value of column";
		if (intent.retyped_columns.size() > 1)
			reason += 's';
		for (size_t i = 0; i < intent.retyped_columns.size(); i++) {
			const char *column = intent.retyped_columns[i];
			reason += i == 0 ? " " : ", ";
			reason += PgCall([&]() { return quote_identifier(column); });
		}
		reason += " without row changes in the trail";
		if (stmt->relation->inh &&
		    PgCall([&]() { return find_inheritance_children(table.relid, NoLock) != NIL; }))
			reason += " (and in its partitions or child tables)";
		RecordGap(table, reason);
	}

	for (RangeVar *attached : intent.attached) {
		const char *unlogged_part = PgCall([&]() -> const char * {
			Oid part = RangeVarGetRelid(attached, NoLock, true);
			if (!OidIsValid(part) || !table.permanent || get_rel_persistence(part) != RELPERSISTENCE_UNLOGGED)
				return nullptr;
			return QualifiedName(part);
		});
		if (unlogged_part)
			RecordGap(table, fmt::format("ATTACH PARTITION of unlogged table {}: changes to its rows are not "
			                             "recorded until it is SET LOGGED",
			                             unlogged_part));
	}
	GuardPartitionMoves(intent, table, pstmt, query_string);
}

// CREATE UNLOGGED TABLE ... PARTITION OF a recorded table: that part of it is not recorded.
void GuardCreatePartition(CreateStmt *stmt, PlannedStmt *pstmt, const char *query_string) {
	if (stmt->partbound == nullptr || stmt->relation->relpersistence != RELPERSISTENCE_UNLOGGED ||
	    list_length(stmt->inhRelations) != 1)
		return;
	GapTarget parent = PgCall([&]() { return LookUpParent(stmt, pstmt, query_string); });
	if (!OidIsValid(parent.relid))
		return;
	const char *partition = PgCall([&]() { return quote_identifier(stmt->relation->relname); });
	RecordGap(parent,
	          fmt::format("CREATE UNLOGGED TABLE {} PARTITION OF this table: changes to its rows are not "
	                      "recorded until it is SET LOGGED",
	                      partition));
}

// --- Renames (issue 13): a table renamed into or out of a rule's pattern -------------------------
// The rules match names (schema.table) when each change is decoded, so a table owner could rename
// her table to match an ignore rule (or to leave a mask), write unrecorded, and rename it back.
// Such a rename is allowed and recorded in bemi.gaps, as other DDL that takes changes out of the
// trail: the row says which rules matched before and which match after.

// One table-targeted rule, as read from bemi.rules (palloc'd strings).
struct RawTableRule {
	int64 id;
	const char *kind;
	const char *target;
	int ncolumns; // column patterns (ignore with columns, mask); 0 for none
	const char **columns;
};
struct RawTableRules {
	int n = 0;
	RawTableRule *rules = nullptr;
};

// The table rules in force, read as the extension's owner (the caller need not read bemi.rules);
// none when bemi.rules does not exist (SQL older than 0.4.0). Raw PostgreSQL: only inside PgCall,
// with the identity already switched.
RawTableRules ReadTableRules() {
	RawTableRules out;
	Oid bemi_schema = get_namespace_oid("bemi", true);
	if (!OidIsValid(bemi_schema) || !OidIsValid(get_relname_relid("rules", bemi_schema)))
		return out;
	MemoryContext caller = CurrentMemoryContext;
	(void)set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
	                        true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "bemi: SPI_connect failed");
	if (SPI_execute("SELECT id, kind::text, target::text, columns FROM bemi.rules WHERE target IS NOT NULL "
	                "ORDER BY id",
	                true, 0) != SPI_OK_SELECT)
		elog(ERROR, "bemi: could not read bemi.rules");
	MemoryContext spi = MemoryContextSwitchTo(caller);
	out.n = static_cast<int>(SPI_processed);
	out.rules = static_cast<RawTableRule *>(palloc0(sizeof(RawTableRule) * (out.n + 1)));
	for (int i = 0; i < out.n; i++) {
		HeapTuple tuple = SPI_tuptable->vals[i];
		TupleDesc desc = SPI_tuptable->tupdesc;
		bool isnull;
		out.rules[i].id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		out.rules[i].kind = SPI_getvalue(tuple, desc, 2);
		out.rules[i].target = SPI_getvalue(tuple, desc, 3);
		Datum columns = SPI_getbinval(tuple, desc, 4, &isnull);
		if (!isnull) {
			Datum *elements;
			bool *nulls;
			int n;
			deconstruct_array(DatumGetArrayTypeP(columns), TEXTOID, -1, false, TYPALIGN_INT, &elements,
			                  &nulls, &n);
			out.rules[i].columns = static_cast<const char **>(palloc0(sizeof(char *) * (n + 1)));
			for (int c = 0; c < n; c++)
				if (!nulls[c])
					out.rules[i].columns[out.rules[i].ncolumns++] = TextDatumGetCString(elements[c]);
		}
	}
	MemoryContextSwitchTo(spi);
	SPI_finish();
	return out;
}

// A rule as a gap row names it: "rule 3 (mask public.users)".
std::string RuleName(const RawTableRule &rule) {
	return fmt::format("rule {} ({} {})", rule.id, rule.kind, rule.target);
}

// Does the rule's target match schema.name? Its two halves are matched with GlobMatch
// (bemi/glob.h), as decoding matches them.
bool TargetMatches(const RawTableRule &rule, std::string_view schema, std::string_view name) {
	std::string_view target(rule.target);
	size_t dot = target.find('.');
	return dot != std::string_view::npos && GlobMatch(target.substr(0, dot), schema) &&
	       GlobMatch(target.substr(dot + 1), name);
}

// The rules that match a table recorded as schema.name.
std::vector<std::string> MatchingRules(const RawTableRules &rules, std::string_view schema,
                                       std::string_view name) {
	std::vector<std::string> matching;
	for (int i = 0; i < rules.n; i++)
		if (TargetMatches(rules.rules[i], schema, name))
			matching.push_back(RuleName(rules.rules[i]));
	return matching;
}

// The column rules (ignore with columns, mask) that match a column of a table recorded as
// schema.name.
std::vector<std::string> MatchingColumnRules(const RawTableRules &rules, std::string_view schema,
                                             std::string_view name, std::string_view column) {
	std::vector<std::string> matching;
	for (int i = 0; i < rules.n; i++) {
		const RawTableRule &rule = rules.rules[i];
		if (rule.ncolumns == 0 || !TargetMatches(rule, schema, name))
			continue;
		for (int c = 0; c < rule.ncolumns; c++)
			if (GlobMatch(rule.columns[c], column)) {
				matching.push_back(RuleName(rule));
				break;
			}
	}
	return matching;
}

std::string Listed(const std::vector<std::string> &rules) {
	if (rules.empty())
		return "none";
	std::string out;
	for (const auto &rule : rules)
		out += (out.empty() ? "" : ", ") + rule;
	return out;
}

// The table rules in force, read as the extension's owner; none when there are none.
RawTableRules ReadRulesAsOwner(Oid ext_owner) {
	SavedIdentity saved = PgCall([&]() { return BecomeExtensionOwner(ext_owner); });
	RawTableRules rules;
	try {
		rules = PgCall([&]() { return ReadTableRules(); });
	} catch (...) {
		PgCall([&]() { RestoreIdentity(saved); });
		throw;
	}
	PgCall([&]() { RestoreIdentity(saved); });
	return rules;
}

// Is this a partition whose changes are recorded under its root's name (and judged by it)?
bool RecordedAsRoot(Oid relid) {
	return bemi_partitions_as_root && get_rel_relispartition(relid);
}

// Is this a table recorded under its own name (not a partition judged by its root's)?
bool IsRenameTarget(Oid relid) {
	return OidIsValid(relid) && IsUserTable(relid) && !RecordedAsRoot(relid);
}

// A recorded table, its name before and after a statement, and for a column rename the column's
// old and new names; raw PostgreSQL (PgCall) fills it, palloc'd strings.
struct RawRenamed {
	Oid relid;
	const char *schema, *name, *new_schema, *new_name;
	const char *column, *new_column; // RENAME COLUMN only
};
struct RawRenames {
	Oid ext_owner = InvalidOid;
	List *tables = NIL; // of RawRenamed *
};

RawRenamed *RenamedTable(Oid relid, const char *new_schema, const char *new_name) {
	auto *r = static_cast<RawRenamed *>(palloc0(sizeof(RawRenamed)));
	r->relid = relid;
	r->schema = get_namespace_name(get_rel_namespace(relid));
	r->name = get_rel_name(relid);
	r->new_schema = new_schema ? new_schema : r->schema;
	r->new_name = new_name ? new_name : r->name;
	return r;
}

// A RENAME COLUMN renames the column in the table and, unless ONLY, in its child tables: each
// recorded table among them under its own name. Partitions are judged by their root, which is
// the table renamed (a partition's inherited column cannot be renamed alone).
void AddRenamedColumn(RawRenames *out, RenameStmt *rename) {
	Oid relid = RangeVarGetRelid(rename->relation, NoLock, true);
	if (!OidIsValid(relid))
		return;
	List *tables =
	    rename->relation->inh ? find_all_inheritors(relid, NoLock, nullptr) : list_make1_oid(relid);
	ListCell *lc;
	foreach (lc, tables) {
		Oid table = lfirst_oid(lc);
		if (!IsRenameTarget(table))
			continue;
		RawRenamed *r = RenamedTable(table, nullptr, nullptr);
		r->column = rename->subname;
		r->new_column = rename->newname;
		out->tables = lappend(out->tables, r);
	}
}

// The recorded tables a RENAME / SET SCHEMA / RENAME COLUMN statement renames, with old and new
// names; raw PostgreSQL (PgCall). A plain lookup without a lock: the statement itself locks and
// checks ownership next, and the gap row is undone with it if that fails.
RawRenames LookUpRenamed(Node *stmt) {
	RawRenames out;
	out.ext_owner = BemiExtensionOwner();
	if (!OidIsValid(out.ext_owner))
		return out;
	if (IsA(stmt, RenameStmt)) {
		auto *rename = castNode(RenameStmt, stmt);
		if (rename->renameType == OBJECT_TABLE) {
			Oid relid = RangeVarGetRelid(rename->relation, NoLock, true);
			if (IsRenameTarget(relid))
				out.tables = lappend(out.tables, RenamedTable(relid, nullptr, rename->newname));
		} else if (rename->renameType == OBJECT_COLUMN) {
			AddRenamedColumn(&out, rename);
		} else if (rename->renameType == OBJECT_SCHEMA) {
			Oid nsp = get_namespace_oid(rename->subname, true);
			if (!OidIsValid(nsp))
				return out;
			Relation rel = table_open(RelationRelationId, AccessShareLock);
			ScanKeyData key;
			ScanKeyInit(&key, Anum_pg_class_relnamespace, BTEqualStrategyNumber, F_OIDEQ,
			            ObjectIdGetDatum(nsp));
			SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, nullptr, 1, &key);
			HeapTuple tuple;
			while (HeapTupleIsValid(tuple = systable_getnext(scan))) {
				Oid relid = reinterpret_cast<Form_pg_class>(GETSTRUCT(tuple))->oid;
				if (IsRenameTarget(relid))
					out.tables = lappend(out.tables, RenamedTable(relid, rename->newname, nullptr));
			}
			systable_endscan(scan);
			table_close(rel, AccessShareLock);
		}
	} else if (IsA(stmt, AlterObjectSchemaStmt)) {
		auto *move = castNode(AlterObjectSchemaStmt, stmt);
		if (move->objectType == OBJECT_TABLE) {
			Oid relid = RangeVarGetRelid(move->relation, NoLock, true);
			if (IsRenameTarget(relid))
				out.tables = lappend(out.tables, RenamedTable(relid, move->newschema, nullptr));
		}
	}
	return out;
}

// Does this statement rename a table, a schema holding tables, or a table's column? From the
// parse tree alone.
bool IsRename(Node *stmt) {
	if (IsA(stmt, RenameStmt)) {
		auto *rename = castNode(RenameStmt, stmt);
		return rename->renameType == OBJECT_TABLE || rename->renameType == OBJECT_SCHEMA ||
		       (rename->renameType == OBJECT_COLUMN && rename->relationType == OBJECT_TABLE);
	}
	return IsA(stmt, AlterObjectSchemaStmt) &&
	       castNode(AlterObjectSchemaStmt, stmt)->objectType == OBJECT_TABLE;
}

// A rename that changes which rules match a recorded table, or one of its columns: one gap row
// per such table.
void GuardRename(Node *stmt, PlannedStmt *pstmt, const char *query_string) {
	if (!IsRename(stmt))
		return;
	RawRenames renames = PgCall([&]() { return LookUpRenamed(stmt); });
	if (renames.tables == NIL)
		return;
	RawTableRules rules = ReadRulesAsOwner(renames.ext_owner);
	if (rules.n == 0)
		return;

	for (int i = 0; i < list_length(renames.tables); i++) {
		auto *raw = static_cast<RawRenamed *>(list_nth(renames.tables, i));
		std::string reason;
		if (raw->column != nullptr) {
			std::vector<std::string> before = MatchingColumnRules(rules, raw->schema, raw->name, raw->column);
			std::vector<std::string> after =
			    MatchingColumnRules(rules, raw->schema, raw->name, raw->new_column);
			if (before == after)
				continue;
			reason =
			    fmt::format("RENAME COLUMN {} TO {}: the tracking rules matching this column change from "
			                "{} to {}; what they leave out of the trail differs from here on",
			                raw->column, raw->new_column, Listed(before), Listed(after));
		} else {
			std::vector<std::string> before = MatchingRules(rules, raw->schema, raw->name);
			std::vector<std::string> after = MatchingRules(rules, raw->new_schema, raw->new_name);
			if (before == after)
				continue;
			reason =
			    fmt::format("RENAME to {}.{}: the tracking rules matching this table change from {} to {}; "
			                "what they leave out of the trail differs from here on",
			                raw->new_schema, raw->new_name, Listed(before), Listed(after));
		}
		GapTarget table =
		    PgCall([&]() { return TargetOf(renames.ext_owner, raw->relid, pstmt, query_string); });
		RecordGap(table, reason);
	}
}

// --- ATTACH / DETACH PARTITION (issue 13): a table moved under another root ----------------------
// Under bemi.partitions_as_root a partition's changes are recorded under its root's name, so the
// root's rules are the partition's (and its own partitions'). Detaching a partition from a masked
// or ignored root, writing, and attaching it again is the rename bypass again: an ATTACH or a
// DETACH that changes which rules match it records a gap. A DETACH CONCURRENTLY records it in its
// first transaction, which leaves the partition "detach pending": from that commit on, decoding
// records it under its own name already (PostgreSQL's partition ancestors stop at a pending
// detach), so the FINALIZE that completes an interrupted one changes no rule and records nothing.

// The name a table's changes are recorded under: its root's for a partition (palloc'd).
struct RecordedName {
	const char *schema, *name;
};

RecordedName RecordedNameOf(Oid relid) {
	Oid recorded_as = relid;
	if (RecordedAsRoot(relid)) {
		List *ancestors = get_partition_ancestors(relid);
		if (ancestors != NIL)
			recorded_as = llast_oid(ancestors);
	}
	return {get_namespace_name(get_rel_namespace(recorded_as)), get_rel_name(recorded_as)};
}

// One partition an ALTER TABLE attaches to or detaches from `parent`, with the names it is
// recorded under before and after; relid InvalidOid when it is not a recorded table.
struct RawMove {
	Oid relid;
	RecordedName before, after;
};

RawMove LookUpMove(Oid parent, RangeVar *partition, bool attach) {
	RawMove move = {};
	Oid relid = RangeVarGetRelid(partition, NoLock, true);
	if (!OidIsValid(relid) || !IsUserTable(relid))
		return move;
	move.relid = relid;
	RecordedName own = {get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid)};
	// The parent's name (its root's) stands for the partition's while it is attached.
	RecordedName root = RecordedNameOf(parent);
	move.before = attach ? own : root;
	move.after = attach ? root : own;
	return move;
}

// One gap row per partition that this ATTACH / DETACH moves between roots matched by different
// rules; `parent` is the table altered (a recorded one).
void GuardPartitionMoves(const AlterIntent &intent, const GapTarget &parent, const PlannedStmt *pstmt,
                         const char *query_string) {
	if (!bemi_partitions_as_root || (intent.attached.empty() && intent.detached.empty()))
		return;
	RawTableRules rules = ReadRulesAsOwner(parent.ext_owner);
	if (rules.n == 0)
		return;
	auto guard = [&](RangeVar *partition, bool attach) {
		RawMove move = PgCall([&]() { return LookUpMove(parent.relid, partition, attach); });
		if (!OidIsValid(move.relid))
			return;
		std::vector<std::string> before = MatchingRules(rules, move.before.schema, move.before.name);
		std::vector<std::string> after = MatchingRules(rules, move.after.schema, move.after.name);
		if (before == after)
			return;
		GapTarget table =
		    PgCall([&]() { return TargetOf(parent.ext_owner, move.relid, pstmt, query_string); });
		RecordGap(table,
		          fmt::format("{} PARTITION {} {}: its changes (and its partitions') are recorded as "
		                      "{}.{} from here on, and the tracking rules matching them change from {} "
		                      "to {}; what they leave out of the trail differs from here on",
		                      attach ? "ATTACH" : "DETACH", attach ? "to" : "from", parent.name,
		                      move.after.schema, move.after.name, Listed(before), Listed(after)));
	};
	for (RangeVar *partition : intent.attached)
		guard(partition, true);
	for (RangeVar *partition : intent.detached)
		guard(partition, false);
}

} // namespace

// Is this a table whose changes bemi records, persistence aside? The same rule as
// bemi._user_tables(): a table or partitioned table outside the system schemas and bemi's.
bool IsUserTable(Oid relid) {
	char kind = get_rel_relkind(relid);
	Oid nsp = get_rel_namespace(relid);
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		return false;
	if (IsCatalogNamespace(nsp) || IsToastNamespace(nsp) || isAnyTempNamespace(nsp))
		return false;
	const char *nspname = get_namespace_name(nsp);
	return nspname != nullptr && strcmp(nspname, "information_schema") != 0 && strcmp(nspname, "bemi") != 0;
}

void RecordTrailGap(Oid relid, const PlannedStmt *pstmt, const char *query_string,
                    const std::string &reason) {
	GapTarget target = PgCall([&]() {
		Oid ext_owner = BemiExtensionOwner();
		return OidIsValid(ext_owner) ? TargetOf(ext_owner, relid, pstmt, query_string) : GapTarget();
	});
	if (OidIsValid(target.ext_owner))
		RecordGap(target, reason);
}

void GuardDdl(PlannedStmt *pstmt, const char *query_string) {
	Node *stmt = pstmt->utilityStmt;

	// pg_upgrade restores catalogs as they were; the worker alters only bemi's own tables.
	if (IsBinaryUpgrade || bemi_is_worker)
		return;
	if (IsA(stmt, AlterTableStmt))
		GuardAlterTable(castNode(AlterTableStmt, stmt), pstmt, query_string);
	else if (IsA(stmt, CreateStmt))
		GuardCreatePartition(castNode(CreateStmt, stmt), pstmt, query_string);
	else
		GuardRename(stmt, pstmt, query_string);
}

} // namespace bemi
