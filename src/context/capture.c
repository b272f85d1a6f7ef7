/*
 * capture.c: context capture in every backend.
 *
 * Setting a context only records it in backend memory. Just before the first row-modifying
 * statement of a transaction, and again only when the context changed, one transactional logical
 * message carries it into the WAL, signed with the server's key so that its identity can be
 * believed (secret.c); the output plugin hands it to the changes that follow.
 * Read-only work costs nothing. The same hooks hold a backend's first write while a new capture
 * slot is being created, so that no write after CREATE EXTENSION is missed.
 */
#include "bemi/settings.h"
#include "bemi/registry.h"
#include "bemi/lifecycle.h"
#include "bemi/context.h"
#include "bemi/comment.h"
#include "bemi/secret.h"

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/scansup.h"
#include "pgstat.h"
#include "replication/message.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(bemi_set_context);
PG_FUNCTION_INFO_V1(bemi_context);

bool bemi_is_worker = false;

static ExecutorStart_hook_type prev_executor_start = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

/* Context as set by bemi_set_context; all copies live in TopMemoryContext. */
static Jsonb *session_context = NULL;
static Jsonb *local_context = NULL;
static bool local_set = false;      /* this transaction overrides the session context */
static Jsonb *statement_context = NULL; /* from the running top-level statement's comment */

/*
 * Saved states for ROLLBACK TO SAVEPOINT and ROLLBACK: a context set inside a rolled-back
 * savepoint or transaction must not outlive it. An entry of level L holds the state on entering
 * level L; level 1 is the state at the start of the transaction.
 */
typedef struct SavedContext
{
	int level;
	Jsonb *session;
	Jsonb *local;
	bool local_set;
	struct SavedContext *next;
} SavedContext;
static SavedContext *saved_contexts = NULL;

/* Emission: what this transaction already put in the WAL. */
static uint64 context_generation = 1; /* bumped whenever the effective context may change */
static uint64 emitted_generation = 0;
static Oid emitted_role = InvalidOid;
static int emitted_level = 0;
static bool xact_wrote = false;
static bool local_unused_outside_block = false;
static bool drop_pending = false;

static void
FreeJsonb(Jsonb *j)
{
	if (j)
		pfree(j);
}

static Jsonb *
CopyJsonb(Jsonb *j)
{
	Jsonb *copy;

	if (j == NULL)
		return NULL;
	copy = MemoryContextAlloc(TopMemoryContext, VARSIZE(j));
	memcpy(copy, j, VARSIZE(j));
	return copy;
}

static Jsonb *
EffectiveContext(void)
{
	if (statement_context)
		return statement_context;
	return local_set ? local_context : session_context;
}

/* A context must be an object no larger than bemi.max_context_size: refused before any effect. */
static void
ValidateContext(Jsonb *context)
{
	if (!JB_ROOT_IS_OBJECT(context) || JB_ROOT_IS_SCALAR(context))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bemi context must be a JSON object"),
				 errdetail("Got %s.", JsonbToCString(NULL, &context->root, 64)),
				 errhint("Pass an object such as '{\"user_id\": 1}', or NULL to clear the context.")));
	if (VARSIZE(context) - VARHDRSZ > (Size) bemi_max_context_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("bemi context is too large"),
				 errdetail("The context takes %zu bytes; bemi.max_context_size is %d.",
						   (size_t) (VARSIZE(context) - VARHDRSZ), bemi_max_context_size),
				 errhint("Send a smaller context, or raise bemi.max_context_size.")));
}

static void
SaveForSavepoint(void)
{
	int level = GetCurrentTransactionNestLevel();
	SavedContext *saved;

	if (level < 1 || (saved_contexts && saved_contexts->level == level))
		return;
	saved = MemoryContextAlloc(TopMemoryContext, sizeof(SavedContext));
	saved->level = level;
	saved->session = CopyJsonb(session_context);
	saved->local = CopyJsonb(local_context);
	saved->local_set = local_set;
	saved->next = saved_contexts;
	saved_contexts = saved;
}

Datum
bemi_set_context(PG_FUNCTION_ARGS)
{
	Jsonb *context = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	bool is_local = PG_ARGISNULL(1) ? true : PG_GETARG_BOOL(1);

	if (context)
		ValidateContext(context);
	/* Outside a transaction block a local context lives for this statement only: say so at
	 * commit if nothing was written with it (a function that sets it and writes is fine). */
	if (is_local && !IsTransactionBlock())
		local_unused_outside_block = true;

	SaveForSavepoint();
	if (is_local)
	{
		FreeJsonb(local_context);
		local_context = CopyJsonb(context);
		local_set = true;
	}
	else
	{
		FreeJsonb(session_context);
		session_context = CopyJsonb(context);
		FreeJsonb(local_context);
		local_context = NULL;
		local_set = false;
	}
	context_generation++;
	PG_RETURN_VOID();
}

Datum
bemi_context(PG_FUNCTION_ARGS)
{
	Jsonb *context = EffectiveContext();
	Jsonb *copy;

	if (context == NULL)
		PG_RETURN_NULL();
	/* A copy: a bemi_set_context later in the same statement frees ours. */
	copy = palloc(VARSIZE(context));
	memcpy(copy, context, VARSIZE(context));
	PG_RETURN_JSONB_P(copy);
}

/*
 * The message: the application's object with the database-level identity of the writer under
 * the reserved key (which overrides an application key of the same name), signed for this
 * top-level transaction so that the output plugin believes its identity (secret.c). One HMAC per
 * message, one message per writing transaction unless the context or role changes.
 */
static void
EmitContext(void)
{
	Jsonb *context = EffectiveContext();
	StringInfoData buf;
	const char *role = GetUserNameFromId(GetUserId(), true);
	TransactionId top_xid = GetTopTransactionId();
	char *message;
	int message_len;

	initStringInfo(&buf);
	if (context && JB_ROOT_COUNT(context) > 0)
	{
		JsonbToCString(&buf, &context->root, VARSIZE(context));
		Assert(buf.len > 0 && buf.data[buf.len - 1] == '}');
		buf.data[--buf.len] = '\0';
		appendStringInfoString(&buf, ", ");
	}
	else
		appendStringInfoChar(&buf, '{');
	appendStringInfoString(&buf, "\"" BEMI_RESERVED_KEY "\": {\"role\": ");
	escape_json(&buf, role ? role : "");
	appendStringInfoString(&buf, ", \"application_name\": ");
	escape_json(&buf, application_name ? application_name : "");
	appendStringInfoString(&buf, "}}");

	/* Without the key (bemi not preloaded) the message still carries the application context. */
	message = BemiSignMessage(top_xid, buf.data, buf.len, &message_len);
	if (message == NULL)
	{
		message = buf.data;
		message_len = buf.len;
	}
#if PG_VERSION_NUM >= 170000
	LogLogicalMessage(BEMI_MESSAGE_PREFIX, message, message_len, true, false);
#else
	LogLogicalMessage(BEMI_MESSAGE_PREFIX, message, message_len, true);
#endif
	if (message != buf.data)
		pfree(message);
	pfree(buf.data);
}

/* The new slot is consistent, or this entry is no longer a fresh start of this database. */
static bool
SlotReady(BemiDatabase *db, void *arg)
{
	return !db->fresh || db->state != BEMI_STARTING || db->dboid != MyDatabaseId;
}

/* Holds a first write while this database's new slot is not yet consistent. */
static void
WaitForCaptureSlot(BemiDatabase *db)
{
	if (SlotReady(db, NULL) || TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	if (!BemiWaitFor(db, SlotReady, NULL,
					 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), bemi_startup_timeout_ms), false))
		ereport(WARNING,
				(errmsg("bemi capture slot is not ready after %d ms; this write may not be recorded",
						bemi_startup_timeout_ms),
				 errhint("See bemi_status() and the server log.")));
}

/* Does this database capture? Until the launcher has run after a restart, assume it does. */
static BemiDatabase *
CapturingDatabase(bool *capturing)
{
	BemiDatabase *db = BemiFindDatabase(MyDatabaseId);

	*capturing = db != NULL || (bemi_shared != NULL && !bemi_shared->launcher_done);
	return db;
}

/* Called before every row-modifying statement: cheap unless something changed. */
static void
BeforeWrite(void)
{
	bool capturing;
	BemiDatabase *db;

	if (bemi_is_worker || !XLogLogicalInfoActive() || RecoveryInProgress())
		return;
	db = CapturingDatabase(&capturing);
	if (!capturing)
		return;
	if (db)
		WaitForCaptureSlot(db);
	xact_wrote = true;
	if (emitted_generation == context_generation && emitted_role == GetUserId())
		return;
	EmitContext();
	emitted_generation = context_generation;
	emitted_role = GetUserId();
	emitted_level = GetCurrentTransactionNestLevel();
}

/*
 * Where the comments right in front of a statement begin. Up to 17 a statement's location took in
 * the whitespace and comments before it; from 18 it is its first token, which would leave out the
 * Bemi comment that Bemi's packages put in front. Steps back over whitespace and whole block
 * comments (nested ones too, as PostgreSQL's lexer reads them) only, so it stops at the previous
 * statement's end as 17 did.
 */
static int
LeadingCommentsStart(const char *source, int location)
{
	int start = location;

	for (int comments = 0; comments < 1000; comments++)
	{
		int p = start;
		int depth = 1;
		int i;

		while (p > 0 && scanner_isspace(source[p - 1]))
			p--;
		if (p < 4 || source[p - 1] != '/' || source[p - 2] != '*')
			break;
		/* Back from the closing to its own opening, counting nested comments. */
		for (i = p - 3; i >= 1 && depth > 0; i--)
		{
			if (source[i - 1] == '*' && source[i] == '/')
				depth++, i--;
			else if (source[i - 1] == '/' && source[i] == '*')
				depth--, i -= depth > 0;
		}
		if (depth > 0)
			break;
		start = i;				/* the loop's last step left i on the opening's '/' */
	}
	return start;
}

/* A new top-level statement: its comment, if any, is the context of its writes. */
static void
StartStatement(const char *source, int location, int length)
{
	Jsonb *found;
	int len;

	if (source == NULL || bemi_is_worker)
		return;
	if (location < 0)
		location = 0;
	location = LeadingCommentsStart(source, location);
	len = strlen(source + location);
	if (length > 0 && length < len)
		len = length;
	/* Cheap test first: most statements carry no Bemi comment. */
	found = memmem(source + location, len, "/*Bemi", 6) ? BemiCommentContext(source + location, len) : NULL;
	if (found == NULL && statement_context == NULL)
		return;
	FreeJsonb(statement_context);
	statement_context = CopyJsonb(found);
	context_generation++;
}

static bool
StatementWrites(QueryDesc *queryDesc, int eflags)
{
	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return false;
	return queryDesc->operation != CMD_SELECT || queryDesc->plannedstmt->hasModifyingCTE;
}

/*
 * Is this the statement the client sent (not one run by a function or trigger)? The extended
 * protocol executes a copy of the client's text, hence the comparison by content.
 */
static bool
IsTopLevelStatement(const char *source)
{
	if (source == NULL || debug_query_string == NULL)
		return false;
	return source == debug_query_string || strcmp(source, debug_query_string) == 0;
}

static void
bemi_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (IsTopLevelStatement(queryDesc->sourceText))
		StartStatement(queryDesc->sourceText, queryDesc->plannedstmt->stmt_location,
					   queryDesc->plannedstmt->stmt_len);
	if (StatementWrites(queryDesc, eflags))
		BeforeWrite();

	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/* Utility statements that never write user data and must not wait for the slot. */
static bool
UtilityIsHarmless(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_TransactionStmt:
		case T_VariableSetStmt:
		case T_VariableShowStmt:
		case T_ExplainStmt:
		case T_PrepareStmt:
		case T_ExecuteStmt:
		case T_DeallocateStmt:
		case T_ListenStmt:
		case T_NotifyStmt:
		case T_UnlistenStmt:
		case T_CheckPointStmt:
		case T_DiscardStmt:
		case T_FetchStmt:
		case T_ClosePortalStmt:
		case T_DeclareCursorStmt:
		case T_CallStmt:
		case T_DoStmt:
		case T_CreateExtensionStmt:
			return true;
		default:
			return false;
	}
}

static bool
DropsExtensions(Node *stmt)
{
	if (IsA(stmt, DropStmt))
	{
		ObjectType type = ((DropStmt *) stmt)->removeType;

		return type == OBJECT_EXTENSION || type == OBJECT_SCHEMA;
	}
	return IsA(stmt, DropOwnedStmt);
}

static void
bemi_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					 ProcessUtilityContext context, ParamListInfo params,
					 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node *stmt = pstmt->utilityStmt;
	volatile bool had_extension = false;
	volatile Oid paused_database = InvalidOid;

	if (context == PROCESS_UTILITY_TOPLEVEL)
		StartStatement(queryString, pstmt->stmt_location, pstmt->stmt_len);
	if (!bemi_is_worker && !UtilityIsHarmless(stmt))
	{
		bool capturing;
		BemiDatabase *db = CapturingDatabase(&capturing);

		/* CREATE TABLE AS and SELECT INTO write rows that no executor write hook sees. */
		if ((IsA(stmt, CopyStmt) && ((CopyStmt *) stmt)->is_from) || IsA(stmt, TruncateStmt) ||
			IsA(stmt, CreateTableAsStmt))
			BeforeWrite();
		else if (db)
			WaitForCaptureSlot(db);
	}
	BemiGuardDdl(pstmt, queryString);
	if (DropsExtensions(stmt))
		had_extension = OidIsValid(get_extension_oid("bemi", true));
	if (IsA(stmt, DropdbStmt))
		paused_database = BemiPauseForDropDatabase(((DropdbStmt *) stmt)->dbname);

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

	if (had_extension && !OidIsValid(get_extension_oid("bemi", true)))
		drop_pending = true;
}

/* ROLLBACK: the session context goes back to what it was when the transaction started. */
static void
RestoreSessionContext(void)
{
	SavedContext *first = saved_contexts;

	if (first == NULL)
		return;
	while (first->next)
		first = first->next;
	FreeJsonb(session_context);
	session_context = first->session;
	first->session = NULL;
}

static void
ResetTransactionState(void)
{
	FreeJsonb(local_context);
	local_context = NULL;
	local_set = false;
	while (saved_contexts)
	{
		SavedContext *next = saved_contexts->next;

		FreeJsonb(saved_contexts->session);
		FreeJsonb(saved_contexts->local);
		pfree(saved_contexts);
		saved_contexts = next;
	}
	FreeJsonb(statement_context);
	statement_context = NULL;
	emitted_generation = 0;
	emitted_role = InvalidOid;
	context_generation++;
}

/* The end of a transaction, however it ends: nothing of it carries over but the session context. */
static void
EndTransaction(void)
{
	ResetTransactionState();
	xact_wrote = false;
	local_unused_outside_block = false;
	drop_pending = false;
}

static void
bemi_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (xact_wrote)
				BemiWakeWorker(MyDatabaseId);
			else if (local_unused_outside_block)
				ereport(WARNING,
						(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
						 errmsg("bemi_set_context with is_local = true had no effect outside a transaction block"),
						 errhint("Call it after BEGIN, or pass is_local => false to set it for the session.")));
			if (drop_pending)
				BemiStopCapture(MyDatabaseId);
			EndTransaction();
			break;
		case XACT_EVENT_PREPARE:
			EndTransaction();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			RestoreSessionContext();
			EndTransaction();
			break;
		default:
			break;
	}
}

static void
bemi_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
					  void *arg)
{
	int level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* The message emitted inside the aborted savepoint is gone with it. */
		if (emitted_level >= level)
			emitted_generation = 0;
		while (saved_contexts && saved_contexts->level >= level)
		{
			SavedContext *saved = saved_contexts;

			saved_contexts = saved->next;
			FreeJsonb(session_context);
			FreeJsonb(local_context);
			session_context = saved->session;
			local_context = saved->local;
			local_set = saved->local_set;
			pfree(saved);
			context_generation++;
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		if (emitted_level >= level)
			emitted_level = level - 1;
		if (saved_contexts && saved_contexts->level == level)
		{
			SavedContext *saved = saved_contexts;

			if (saved->next && saved->next->level == level - 1)
			{
				saved_contexts = saved->next;
				FreeJsonb(saved->session);
				FreeJsonb(saved->local);
				pfree(saved);
			}
			else
				saved->level = level - 1;
		}
	}
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
