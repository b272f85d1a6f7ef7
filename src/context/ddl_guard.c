/*
 * ddl_guard.c: DDL on a recorded table, checked in the backend that runs it, before it runs.
 *
 * A table owner must not be able to change data without a trace. Three statements would let her:
 * - REPLICA IDENTITY other than FULL makes before-images incomplete (a DELETE with no key and an
 *   empty before-image): refused while bemi.replica_identity_full is on (only a superuser can
 *   turn it off; bemi_status() then lists the table in incomplete_image_tables).
 * - SET UNLOGGED, or an unlogged table becoming a partition of a recorded one, takes the table's
 *   later writes out of the WAL, so out of the trail: allowed, and recorded in bemi.gaps. SET LOGGED
 *   records a second gap row saying capture resumes (what changed in between is not in the trail),
 *   and puts REPLICA IDENTITY FULL on the table first, as the event trigger does for new tables.
 * - ALTER COLUMN ... TYPE rewrites every value of the column (USING can put anything there) with no
 *   row change in the WAL: allowed, and recorded in bemi.gaps with the statement.
 *
 * The gap rows are written before the statement runs, in its own (sub)transaction: if the ALTER
 * fails or is rolled back, its gap row goes with it. They are written as the extension's owner
 * under a restricted security context, with a pinned search_path and parameters only, so the caller
 * needs no right on bemi.gaps and can put nothing there but the facts of her own statement.
 *
 * Cost: statements without one of these subcommands return after a walk over their command list,
 * without a catalog lookup. Only the rare ones look for the extension and the table.
 */
#include "bemi/settings.h"
#include "bemi/context.h"

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
#include "catalog/pg_type.h"
#include "commands/tablecmds.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/syscache.h"

/* Longest statement text kept in a gap row, in bytes. */
#define BEMI_GAP_STATEMENT_MAX 2000

/* What one statement asks for, as far as the guard cares. */
typedef struct DdlIntent
{
	bool replica_identity;  /* REPLICA IDENTITY other than FULL */
	char identity_type;     /* the last one asked for */
	bool set_logged;
	bool set_unlogged;
	List *retyped_columns;  /* ALTER COLUMN ... TYPE, column names */
	List *attached;         /* ATTACH PARTITION, RangeVars */
} DdlIntent;

/* Reads the subcommands that matter; true when there is at least one. No catalog access. */
static bool
ReadAlterTable(AlterTableStmt *stmt, DdlIntent *intent)
{
	ListCell *lc;
	bool any = false;

	foreach (lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

		switch (cmd->subtype)
		{
			case AT_ReplicaIdentity:
			{
				ReplicaIdentityStmt *ri = (ReplicaIdentityStmt *) cmd->def;

				if (ri->identity_type != REPLICA_IDENTITY_FULL)
				{
					intent->replica_identity = true;
					intent->identity_type = ri->identity_type;
					any = true;
				}
				break;
			}
			case AT_SetLogged:
				intent->set_logged = any = true;
				break;
			case AT_SetUnLogged:
				intent->set_unlogged = any = true;
				break;
			case AT_AlterColumnType:
				intent->retyped_columns = lappend(intent->retyped_columns, cmd->name);
				any = true;
				break;
			case AT_AttachPartition:
				intent->attached = lappend(intent->attached, ((PartitionCmd *) cmd->def)->name);
				any = true;
				break;
			default:
				break;
		}
	}
	return any;
}

/* The bemi extension of this database and its owner; InvalidOid when there is none. */
static Oid
BemiExtensionOwner(void)
{
	Relation rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple tuple;
	Oid owner = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("bemi"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		owner = ((Form_pg_extension) GETSTRUCT(tuple))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}

/*
 * Is this a table whose changes bemi records, persistence aside? The same rule as
 * bemi._user_tables(): a table or partitioned table outside the system schemas and bemi's.
 */
static bool
IsUserTable(Oid relid)
{
	char kind = get_rel_relkind(relid);
	Oid nsp = get_rel_namespace(relid);
	char *nspname;

	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		return false;
	if (IsCatalogNamespace(nsp) || IsToastNamespace(nsp) || isAnyTempNamespace(nsp))
		return false;
	nspname = get_namespace_name(nsp);
	return nspname != NULL && strcmp(nspname, "information_schema") != 0 && strcmp(nspname, "bemi") != 0;
}

/* pg_class.relreplident, which lsyscache has no getter for. */
static char
ReplicaIdentityOf(Oid relid)
{
	HeapTuple tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	char identity;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	identity = ((Form_pg_class) GETSTRUCT(tuple))->relreplident;
	ReleaseSysCache(tuple);
	return identity;
}

/* schema.table, quoted as needed: how gap rows and messages name a table. */
static char *
QualifiedName(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

/* The text of this statement alone (the query string may hold several), clipped to a sane size. */
static char *
StatementText(PlannedStmt *pstmt, const char *query_string)
{
	int location = pstmt->stmt_location;
	int len;

	if (query_string == NULL)
		return NULL;
	if (location < 0 || location > (int) strlen(query_string))
		location = 0;
	len = strlen(query_string + location);
	if (pstmt->stmt_len > 0 && pstmt->stmt_len < len)
		len = pstmt->stmt_len;
	if (len > BEMI_GAP_STATEMENT_MAX)
	{
		len = pg_mbcliplen(query_string + location, len, BEMI_GAP_STATEMENT_MAX);
		return psprintf("%.*s...", len, query_string + location);
	}
	return pnstrdup(query_string + location, len);
}

/*
 * Does bemi.gaps have the columns of 0.2.0 (relation, table_oid, role, statement)? Not while the
 * database's SQL is still 0.1.0, between `make install` and ALTER EXTENSION bemi UPDATE.
 */
static bool
GapsHaveRelation(void)
{
	Oid bemi_schema = get_namespace_oid("bemi", true);
	Oid gaps = OidIsValid(bemi_schema) ? get_relname_relid("gaps", bemi_schema) : InvalidOid;

	return OidIsValid(gaps) && get_attnum(gaps, "relation") != InvalidAttrNumber;
}

/*
 * One row in bemi.gaps, written as the extension's owner: the caller has no right on bemi.gaps
 * and gets none. Parameters only, fully qualified table, search_path pinned; SPI nests, so this
 * works from a function's EXECUTE too.
 */
static void
RecordGap(Oid ext_owner, Oid relid, const char *reason, const char *statement)
{
	Oid types[7] = {PG_LSNOID, PG_LSNOID, TEXTOID, TEXTOID, OIDOID, TEXTOID, TEXTOID};
	Datum args[7];
	char nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	XLogRecPtr now_lsn = GetXLogInsertRecPtr();
	const char *role = GetUserNameFromId(GetUserId(), false);
	Oid save_userid;
	int save_sec_context;
	int save_nestlevel;

	args[0] = LSNGetDatum(now_lsn);
	args[1] = LSNGetDatum(now_lsn);
	args[2] = CStringGetTextDatum(reason);
	args[3] = CStringGetTextDatum(QualifiedName(relid));
	args[4] = ObjectIdGetDatum(relid);
	args[5] = CStringGetTextDatum(role);
	if (statement)
		args[6] = CStringGetTextDatum(statement);
	else
		nulls[6] = 'n';

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(ext_owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
										  SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	PG_TRY();
	{
		(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "bemi: SPI_connect failed");
		if (SPI_execute_with_args(GapsHaveRelation()
									  ? "INSERT INTO bemi.gaps (from_lsn, to_lsn, reason, relation, table_oid, role, statement)"
										" VALUES ($1, $2, $3, $4, $5, $6, $7)"
									  /* 0.1.0's bemi.gaps: the facts go into the reason. */
									  : "INSERT INTO bemi.gaps (from_lsn, to_lsn, reason) VALUES ($1, $2,"
										" pg_catalog.format('%s (table %s, OID %s, role %s, statement: %s)',"
										" $3, $4, $5, $6, COALESCE($7, '')))",
								  7, types, args, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "bemi: could not record a gap in bemi.gaps");
		SPI_finish();
	}
	PG_FINALLY();
	{
		AtEOXact_GUC(false, save_nestlevel);
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
}

/*
 * Before an unlogged table becomes logged: give it REPLICA IDENTITY FULL, as new tables get.
 * Runs as the caller, who owns the table (SET LOGGED needs that too); the guard never refuses
 * FULL. In the SET LOGGED statement's transaction, so undone with it.
 */
static void
PutFullReplicaIdentity(Oid relid)
{
	char *sql = psprintf("ALTER TABLE %s REPLICA IDENTITY FULL", QualifiedName(relid));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "bemi: SPI_connect failed");
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "bemi: could not set REPLICA IDENTITY FULL on %s", QualifiedName(relid));
	SPI_finish();
}

/* The replica identity as ALTER TABLE spells it, for the refusal's detail. */
static const char *
IdentityName(char identity_type)
{
	switch (identity_type)
	{
		case REPLICA_IDENTITY_NOTHING:
			return "NOTHING";
		case REPLICA_IDENTITY_INDEX:
			return "USING INDEX";
		default:
			return "DEFAULT";
	}
}

/*
 * ALTER TABLE on a recorded table: refuse an incomplete replica identity, record the rest. The
 * table's state before the statement decides (it has not run yet); a statement that both sets
 * LOGGED and changes replica identity is judged as on the permanent table it makes.
 */
static void
GuardAlterTable(AlterTableStmt *stmt, PlannedStmt *pstmt, const char *query_string)
{
	DdlIntent intent = {0};
	Oid ext_owner;
	Oid relid;
	bool permanent;
	bool will_be_permanent;
	char *statement;
	ListCell *lc;

	if (!ReadAlterTable(stmt, &intent))
		return;
	ext_owner = BemiExtensionOwner();
	if (!OidIsValid(ext_owner))
		return;
	/* The lookup ALTER TABLE itself makes next (same lock, same permission check): no new error. */
	relid = AlterTableLookupRelation(stmt, AlterTableGetLockLevel(stmt->cmds));
	if (!OidIsValid(relid) || !IsUserTable(relid))
		return;
	permanent = get_rel_persistence(relid) == RELPERSISTENCE_PERMANENT;
	will_be_permanent = (permanent && !intent.set_unlogged) || intent.set_logged;
	statement = StatementText(pstmt, query_string);

	if (intent.replica_identity && will_be_permanent && bemi_replica_identity_full)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("bemi records complete images: table %s must keep REPLICA IDENTITY FULL",
						QualifiedName(relid)),
				 errdetail("With REPLICA IDENTITY %s an UPDATE or DELETE would be recorded without its complete "
						   "before-image.", IdentityName(intent.identity_type)),
				 errhint("A superuser may set bemi.replica_identity_full = off to manage replica identity; "
						 "bemi_status() then lists the table in incomplete_image_tables.")));

	/* SET UNLOGGED on a partitioned table changes nothing (PostgreSQL 15): only plain tables count. */
	if (get_rel_relkind(relid) == RELKIND_RELATION)
	{
		/* A partition's changes are recorded under its root's name: say which table it is part of. */
		char *of = get_rel_relispartition(relid)
					   ? psprintf(" (a partition of %s)", QualifiedName(get_partition_parent(relid, false)))
					   : "";

		if (intent.set_unlogged && permanent)
			RecordGap(ext_owner, relid,
					  psprintf("SET UNLOGGED: changes to this table%s are not recorded until it is SET LOGGED", of),
					  statement);
		else if (intent.set_logged && !permanent)
		{
			if (bemi_replica_identity_full && ReplicaIdentityOf(relid) != REPLICA_IDENTITY_FULL)
				PutFullReplicaIdentity(relid);
			RecordGap(ext_owner, relid,
					  psprintf("SET LOGGED: capture of this table%s resumes; changes made while it was unlogged, "
							   "and the rows it holds now, are not in the trail",
							   of),
					  statement);
		}
	}

	if (intent.retyped_columns != NIL && (permanent || will_be_permanent))
	{
		StringInfoData reason;

		initStringInfo(&reason);
		appendStringInfoString(&reason, "ALTER COLUMN TYPE rewrote every value of column");
		if (list_length(intent.retyped_columns) > 1)
			appendStringInfoChar(&reason, 's');
		foreach (lc, intent.retyped_columns)
			appendStringInfo(&reason, "%s %s", foreach_current_index(lc) == 0 ? "" : ",",
							 quote_identifier((char *) lfirst(lc)));
		appendStringInfoString(&reason, " without row changes in the trail");
		if (stmt->relation->inh && find_inheritance_children(relid, NoLock) != NIL)
			appendStringInfoString(&reason, " (and in its partitions or child tables)");
		RecordGap(ext_owner, relid, reason.data, statement);
	}

	foreach (lc, intent.attached)
	{
		Oid part = RangeVarGetRelid((RangeVar *) lfirst(lc), NoLock, true);

		if (OidIsValid(part) && permanent && get_rel_persistence(part) == RELPERSISTENCE_UNLOGGED)
			RecordGap(ext_owner, relid,
					  psprintf("ATTACH PARTITION of unlogged table %s: changes to its rows are not recorded "
							   "until it is SET LOGGED",
							   QualifiedName(part)),
					  statement);
	}
}

/* CREATE UNLOGGED TABLE ... PARTITION OF a recorded table: that part of it is not recorded. */
static void
GuardCreatePartition(CreateStmt *stmt, PlannedStmt *pstmt, const char *query_string)
{
	Oid ext_owner;
	Oid parent;

	if (stmt->partbound == NULL || stmt->relation->relpersistence != RELPERSISTENCE_UNLOGGED ||
		list_length(stmt->inhRelations) != 1)
		return;
	ext_owner = BemiExtensionOwner();
	if (!OidIsValid(ext_owner))
		return;
	parent = RangeVarGetRelid(linitial_node(RangeVar, stmt->inhRelations), NoLock, true);
	if (!OidIsValid(parent) || !IsUserTable(parent) || get_rel_persistence(parent) != RELPERSISTENCE_PERMANENT)
		return;
	RecordGap(ext_owner, parent,
			  psprintf("CREATE UNLOGGED TABLE %s PARTITION OF this table: changes to its rows are not "
					   "recorded until it is SET LOGGED",
					   quote_identifier(stmt->relation->relname)),
			  StatementText(pstmt, query_string));
}

/*
 * Called by the utility hook before every utility statement runs (context/capture.c): refuses
 * what would make the trail incomplete without a trace, records in bemi.gaps what is allowed.
 */
void
BemiGuardDdl(PlannedStmt *pstmt, const char *query_string)
{
	Node *stmt = pstmt->utilityStmt;

	/* pg_upgrade restores catalogs as they were; the worker alters only bemi's own tables. */
	if (IsBinaryUpgrade || bemi_is_worker)
		return;
	if (IsA(stmt, AlterTableStmt))
		GuardAlterTable((AlterTableStmt *) stmt, pstmt, query_string);
	else if (IsA(stmt, CreateStmt))
		GuardCreatePartition((CreateStmt *) stmt, pstmt, query_string);
}
