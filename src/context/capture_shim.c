/*
 * capture_shim.c: where PostgreSQL calls the context area in every backend: the SQL functions
 * bemi_set_context and bemi_context, the ExecutorStart and ProcessUtility hooks, and the
 * transaction and savepoint callbacks. Each hands over to the C++ core (capture.cpp, through
 * context_core.h) and does nothing else, except what must run outside C++ frames: the previous
 * hook or the standard executor and utility code, which run user code and may ERROR, and DROP
 * DATABASE's pause of its worker around them (PG_TRY).
 */
#include "postgres.h"

#include "bemi/context.h"
#include "bemi/context_core.h"
#include "bemi/lifecycle.h"
#include "bemi/protect.h"

#include "access/xact.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/jsonb.h"

PG_FUNCTION_INFO_V1(bemi_set_context);
PG_FUNCTION_INFO_V1(bemi_context);

bool bemi_is_worker = false;

static ExecutorStart_hook_type prev_executor_start = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

/* bemi_set_context(context jsonb, is_local boolean DEFAULT true) */
Datum
bemi_set_context(PG_FUNCTION_ARGS)
{
	BemiSetContext(PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0), PG_ARGISNULL(1) ? true : PG_GETARG_BOOL(1));
	PG_RETURN_VOID();
}

/* bemi_context(): a copy, since a bemi_set_context later in the same statement replaces the core's. */
Datum
bemi_context(PG_FUNCTION_ARGS)
{
	const Jsonb *context = BemiCurrentContext();
	Jsonb *copy;

	if (context == NULL)
		PG_RETURN_NULL();
	copy = palloc(VARSIZE(context));
	memcpy(copy, context, VARSIZE(context));
	PG_RETURN_JSONB_P(copy);
}

/* Every statement: its comment and, before a write, the context message. */
static void
bemi_executor_start(QueryDesc *queryDesc, int eflags)
{
	bool writes = !(eflags & EXEC_FLAG_EXPLAIN_ONLY) &&
		(queryDesc->operation != CMD_SELECT || queryDesc->plannedstmt->hasModifyingCTE);

	BemiBeforeExecutor(queryDesc->sourceText, queryDesc->plannedstmt->stmt_location,
					   queryDesc->plannedstmt->stmt_len, writes);
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
	/* After the permission checks, so that a role without rights on the trail hears just that. */
	if (writes)
		BemiGuardTrailWrites(queryDesc->plannedstmt, queryDesc->sourceText, queryDesc->operation);
}

/* Every utility statement: the core first (comment, writes, DDL guard), then the statement. */
static void
run_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			ProcessUtilityContext context, ParamListInfo params,
			QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	bool may_drop_bemi = BemiBeforeUtility(pstmt, queryString, context == PROCESS_UTILITY_TOPLEVEL);
	volatile Oid paused_database = InvalidOid;

	/* DROP DATABASE: its worker lets go of it first, and takes it back if the drop fails. */
	if (IsA(pstmt->utilityStmt, DropdbStmt))
		BemiGuardDropDatabase(((DropdbStmt *) pstmt->utilityStmt)->dbname);
	if (IsA(pstmt->utilityStmt, DropdbStmt))
		paused_database = BemiPauseForDropDatabase(((DropdbStmt *) pstmt->utilityStmt)->dbname);
	/* A drop that may take the extension: the worker holds still until this transaction ends. */
	if (may_drop_bemi)
		BemiHoldForDrop();
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		if (OidIsValid(paused_database))
			BemiFinishDropDatabase(paused_database, false);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (OidIsValid(paused_database))
		BemiFinishDropDatabase(paused_database, true);
	if (may_drop_bemi)
		BemiAfterUtility();
}

/*
 * Around it, the DDL events (ddl_events.cpp): the tables a DDL statement is about, noted first (so
 * that what the guard runs on them belongs to the statement), and its rows once it ran.
 */
static void
bemi_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					 ProcessUtilityContext context, ParamListInfo params,
					 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	void	   *ddl = BemiBeforeDdl(pstmt, queryString);

	PG_TRY();
	{
		run_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		BemiAbandonDdl(ddl);
		PG_RE_THROW();
	}
	PG_END_TRY();
	BemiAfterDdl(ddl);
}

static void
bemi_xact_callback(XactEvent event, void *arg)
{
	BemiTransactionEvent(event);
}

static void
bemi_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
					  void *arg)
{
	BemiSubtransactionEvent(event);
}

void
BemiContextInit(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = bemi_executor_start;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = bemi_process_utility;
	RegisterXactCallback(bemi_xact_callback, NULL);
	RegisterSubXactCallback(bemi_subxact_callback, NULL);
}
