/*
 * readable.c: who may read which changes of the trail. Runs in the backend of whoever reads the
 * trail through bemi's functions; the one implementation of the rule, for both checks below.
 *
 * A role may read the changes of a table when it is a superuser, a member of bemi_reader (those
 * read bemi.changes itself), or when it may use the table's schema, SELECT the table, and
 * row-level security hides none of its rows from it (the trail holds every row). Changes are
 * tied to their table by OID: a table dropped since is readable by superusers and trail readers
 * only, and a later table of the same name inherits nothing. Changes committed before the trail
 * came to this database (restored from a dump: their OIDs are another database's) go by name.
 */
#include "postgres.h"

#include "bemi/bemi.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(bemi_readable_table);
PG_FUNCTION_INFO_V1(bemi_may_read);
PG_FUNCTION_INFO_V1(bemi_caller);

#if PG_VERSION_NUM >= 160000
#include "catalog/pg_namespace.h"
#define SchemaUsage(nsp, role) object_aclcheck(NamespaceRelationId, (nsp), (role), ACL_USAGE)
#else
#define SchemaUsage(nsp, role) pg_namespace_aclcheck((nsp), (role), ACL_USAGE)
#endif

typedef enum Refusal
{
	MAY_READ,
	NO_TABLE,
	NO_USAGE,
	NO_SELECT,
	HIDDEN_BY_RLS
} Refusal;

static bool
IsTrailReader(Oid reader)
{
	Oid role = get_role_oid("bemi_reader", true);

	return superuser_arg(reader) || (OidIsValid(role) && has_privs_of_role(reader, role));
}

/* Why `reader` may not read the changes of table `relid`, or MAY_READ. */
static Refusal
CheckTable(Oid reader, Oid relid)
{
	Oid nsp;

	if (!OidIsValid(relid) || !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		return NO_TABLE;
	if (IsTrailReader(reader))
		return MAY_READ;
	nsp = get_rel_namespace(relid);
	if (SchemaUsage(nsp, reader) != ACLCHECK_OK)
		return NO_USAGE;
	if (pg_class_aclcheck(relid, reader, ACL_SELECT) != ACLCHECK_OK)
		return NO_SELECT;
	if (check_enable_rls(relid, reader, true) == RLS_ENABLED)
		return HIDDEN_BY_RLS;
	return MAY_READ;
}

/*
 * bemi._readable_table(tbl regclass) → (schema_name, table_name): the check in front of every
 * history and time-travel read of one table, as the caller. Raises when the caller may not.
 */
Datum
bemi_readable_table(PG_FUNCTION_ARGS)
{
	Oid relid;
	Oid reader = GetUserId();
	char kind;
	char *name;
	char *qualified;
	TupleDesc tupdesc;
	Datum values[2];
	bool nulls[2] = {false, false};

	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("table must not be NULL"),
						errhint("Pass a table name, for example 'todo'::regclass.")));
	relid = PG_GETARG_OID(0);
	name = get_rel_name(relid);
	if (name == NULL)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("table with OID %u does not exist", relid)));
	qualified = DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)));
	kind = get_rel_relkind(relid);
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE), errmsg("\"%s\" is not a table", qualified),
				 errdetail("bemi records changes of tables only; views, sequences and foreign tables have no history.")));

	switch (CheckTable(reader, relid))
	{
		case MAY_READ:
			break;
		case NO_TABLE:
			ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("table with OID %u does not exist", relid)));
			break;
		case NO_USAGE:
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for schema %s", get_namespace_name(get_rel_namespace(relid))),
					 errdetail("Reading the changes of table %s needs USAGE on its schema.", name),
					 errhint("Ask the schema's owner for USAGE on it, or for membership in bemi_reader.")));
			break;
		case NO_SELECT:
			ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("permission denied for table %s", name),
							errdetail("Reading the changes of a table needs SELECT on the table.")));
			break;
		case HIDDEN_BY_RLS:
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("row-level security hides rows of table %s from %s", name, GetUserNameFromId(reader, false)),
					 errdetail("The trail holds every row of the table, so it is readable only by roles that see every row.")));
			break;
	}

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "bemi_readable_table: return type must be a row type");
	values[0] = CStringGetTextDatum(get_namespace_name(get_rel_namespace(relid)));
	values[1] = CStringGetTextDatum(name);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* The answer for the last table asked about: a trail read asks about the same few tables. */
typedef struct MayReadCache
{
	Oid reader;
	Oid relid;
	bool may_read;
} MayReadCache;

/*
 * bemi._may_read(reader oid, table_oid oid, schema text, table text) → boolean: may `reader`
 * read a change recorded for that table? table_oid NULL: the change came with a restored dump,
 * its table is looked up by name. Called for every row by bemi's SECURITY DEFINER readers, with
 * the role of the caller of the public function as `reader`: filtering happens there, out of
 * reach of the caller's own predicates.
 */
Datum
bemi_may_read(PG_FUNCTION_ARGS)
{
	MayReadCache *cache = (MayReadCache *) fcinfo->flinfo->fn_extra;
	Oid reader;
	Oid relid;
	bool result;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	reader = PG_GETARG_OID(0);
	if (!PG_ARGISNULL(1))
		relid = PG_GETARG_OID(1);
	else if (PG_ARGISNULL(2) || PG_ARGISNULL(3))
		relid = InvalidOid;
	else
	{
		char *schema = text_to_cstring(PG_GETARG_TEXT_PP(2));
		char *table = text_to_cstring(PG_GETARG_TEXT_PP(3));
		Oid nsp = get_namespace_oid(schema, true);

		relid = OidIsValid(nsp) ? get_relname_relid(table, nsp) : InvalidOid;
		/* Not cached: rows of a restored trail are rare and name lookups cheap enough. */
		PG_RETURN_BOOL(OidIsValid(relid) ? CheckTable(reader, relid) == MAY_READ : IsTrailReader(reader));
	}
	if (cache && cache->reader == reader && cache->relid == relid)
		PG_RETURN_BOOL(cache->may_read);
	result = OidIsValid(relid) && SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid))
		? CheckTable(reader, relid) == MAY_READ
		: IsTrailReader(reader);
	if (cache == NULL)
		cache = fcinfo->flinfo->fn_extra = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(MayReadCache));
	cache->reader = reader;
	cache->relid = relid;
	cache->may_read = result;
	PG_RETURN_BOOL(result);
}

/* bemi._caller() → oid: the role running the query, as public functions pass it to the readers. */
Datum
bemi_caller(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(GetUserId());
}
