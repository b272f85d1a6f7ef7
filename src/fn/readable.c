/*
 * readable.c: may the caller read the changes of a table? The check in front of every history
 * and time-travel read, so it is a few syscache lookups, not a PL/pgSQL call.
 *
 * The caller must be able to reach the table (USAGE on its schema) and SELECT it, and row-level
 * security must not hide rows of it from the caller (the trail holds every row). Members of bemi_reader read bemi.changes itself,
 * so they pass.
 */
#include "bemi/bemi.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"

PG_FUNCTION_INFO_V1(bemi_readable_table);

Datum
bemi_readable_table(PG_FUNCTION_ARGS)
{
	Oid relid;
	Oid reader;
	char kind;
	char *name;
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
	kind = get_rel_relkind(relid);
	if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)))),
				 errdetail("bemi records changes of tables only; views, sequences and foreign tables have no history.")));

	reader = get_role_oid("bemi_reader", true);
	if (!OidIsValid(reader) || !has_privs_of_role(GetUserId(), reader))
	{
		Oid nsp = get_rel_namespace(relid);

		/* As for a query on the table: no USAGE on its schema, no way to it. */
		if (pg_namespace_aclcheck(nsp, GetUserId(), ACL_USAGE) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for schema %s", get_namespace_name(nsp)),
					 errdetail("Reading the changes of table %s needs USAGE on its schema.", name),
					 errhint("Ask the schema's owner for USAGE on it, or for membership in bemi_reader.")));
		if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
			ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("permission denied for table %s", name),
							errdetail("Reading the changes of a table needs SELECT on the table.")));
		if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("row-level security hides rows of table %s from %s", name, GetUserNameFromId(GetUserId(), false)),
					 errdetail("The trail holds every row of the table, so it is readable only by roles that see every row.")));
	}

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "bemi_readable_table: return type must be a row type");
	values[0] = CStringGetTextDatum(get_namespace_name(get_rel_namespace(relid)));
	values[1] = CStringGetTextDatum(name);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
