// capture.cpp: context capture in every backend, the core behind capture_shim.c.
//
// Setting a context only records it in backend memory (ContextState). Just before the first
// row-modifying statement of a transaction, and again only when the context changed, one
// transactional logical message carries it into the WAL, signed with the server's key so that its
// identity can be believed (secret.c); the output plugin hands it to the changes that follow.
// Read-only work costs nothing. The same hooks hold a backend's first write while a new capture
// slot is being created, so that no write after CREATE EXTENSION is missed.
//
// The hot path (every statement, every write) makes no allocation and no PgCall unless a context
// message is due or the statement carries a Bemi comment.
#include "comment.hpp"
#include "context_state.hpp"
#include "ddl_events.hpp"
#include "ddl_guard.hpp"
#include "protect.hpp"

#include <fmt/format.h>
#include <cstring>

#include "bemi/guard.hpp"

extern "C" {
#include "bemi/bemi.h"
#include "bemi/context.h"
#include "bemi/context_core.h"
#include "bemi/lifecycle.h"
#include "bemi/registry.h"
#include "bemi/secret.h"
#include "bemi/settings.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "replication/message.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
}

namespace bemi {
namespace {

// This backend's context state. Its destructor frees only C++ memory, so it may run at exit.
ContextState state;

// Longest part of a refused non-object shown in the error's detail, in bytes.
constexpr int kShownValueMax = 1000;

// A context must be an object no larger than bemi.max_context_size: refused before any effect.
void Validate(const Jsonb *context) {
	if (!JB_ROOT_IS_OBJECT(context) || JB_ROOT_IS_SCALAR(context)) {
		const char *shown = PgCall([&]() {
			char *text = JsonbToCString(nullptr, const_cast<JsonbContainer *>(&context->root), 64);
			int len = strlen(text);
			return len > kShownValueMax ? psprintf("%.*s...", pg_mbcliplen(text, len, kShownValueMax), text)
			                            : text;
		});
		throw Error(ERRCODE_INVALID_PARAMETER_VALUE, "bemi context must be a JSON object",
		            fmt::format("Got {}.", shown),
		            "Pass an object such as '{\"user_id\": 1}', or NULL to clear the context.");
	}
	size_t size = VARSIZE(context) - VARHDRSZ;
	if (size > static_cast<size_t>(bemi_max_context_size))
		throw Error(ERRCODE_PROGRAM_LIMIT_EXCEEDED, "bemi context is too large",
		            fmt::format("The context takes {} bytes; bemi.max_context_size is {}.", size,
		                        bemi_max_context_size),
		            "Send a smaller context, or raise bemi.max_context_size.");
}

// The message: the application's object with the database-level identity of the writer (its role,
// application_name, and the caller when the role is a SECURITY DEFINER function's) under the
// reserved key (which overrides an application key of the same name), signed for this top-level
// transaction so that the output plugin believes its identity (secret.c). One HMAC per message,
// one message per writing transaction unless the context, role or caller changes.
// Raw PostgreSQL, owns nothing: called only inside PgCall.
void EmitMessage(const Jsonb *context) {
	StringInfoData buf;
	const char *role = GetUserNameFromId(GetUserId(), true);
	TransactionId top_xid = GetTopTransactionId();
	char *message;
	int message_len;

	initStringInfo(&buf);
	if (context && JB_ROOT_COUNT(context) > 0) {
		JsonbToCString(&buf, const_cast<JsonbContainer *>(&context->root), VARSIZE(context));
		Assert(buf.len > 0 && buf.data[buf.len - 1] == '}');
		buf.data[--buf.len] = '\0';
		appendStringInfoString(&buf, ", ");
	} else
		appendStringInfoChar(&buf, '{');
	appendStringInfoString(&buf, "\"" BEMI_RESERVED_KEY "\": {\"role\": ");
	escape_json(&buf, role ? role : "");
	appendStringInfoString(&buf, ", \"application_name\": ");
	escape_json(&buf, application_name ? application_name : "");
	// Inside a SECURITY DEFINER function (bemi's rule functions, say) the write runs with the
	// function owner's rights; the caller is the role that called it (current_user outside).
	if (GetOuterUserId() != GetUserId()) {
		const char *caller = GetUserNameFromId(GetOuterUserId(), true);
		appendStringInfoString(&buf, ", \"caller\": ");
		escape_json(&buf, caller ? caller : "");
	}
	appendStringInfoString(&buf, "}}");

	// Without the key (bemi not preloaded) the message still carries the application context.
	message = BemiSignMessage(top_xid, buf.data, buf.len, &message_len);
	if (message == nullptr) {
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

// The new slot is consistent, or this entry is no longer a fresh start of this database.
bool SlotReady(BemiDatabase *db, void *) {
	return !db->fresh || db->state != BEMI_STARTING || db->dboid != MyDatabaseId;
}

// Holds a first write while this database's new slot is not yet consistent.
void WaitForCaptureSlot(BemiDatabase *db) {
	if (SlotReady(db, nullptr) || TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	PgCall([&]() {
		if (!BemiWaitFor(db, SlotReady, nullptr,
		                 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), bemi_startup_timeout_ms), false))
			ereport(WARNING,
			        (errmsg("bemi capture slot is not ready after %d ms; this write may not be recorded",
			                bemi_startup_timeout_ms),
			         errhint("See bemi_status() and the server log.")));
	});
}

// Called before every row-modifying statement: cheap unless something changed. Until the launcher
// has run after a restart, a database without an entry is assumed to capture.
void BeforeWrite() {
	if (bemi_is_worker || !XLogLogicalInfoActive() || RecoveryInProgress())
		return;
	BemiDatabase *db = BemiFindDatabase(MyDatabaseId);
	if (db == nullptr && (bemi_shared == nullptr || bemi_shared->launcher_done))
		return;
	if (db)
		WaitForCaptureSlot(db);
	Oid role = GetUserId();
	Oid caller = GetOuterUserId();
	if (!state.Writing(role, caller))
		return;
	const Jsonb *context = state.Effective();
	PgCall([&]() { EmitMessage(context); });
	state.MessageEmitted(role, caller, GetCurrentTransactionNestLevel());
}

// A new top-level statement: its comment, if any, is the context of its writes.
void StartStatement(const char *source, int location, int length) {
	if (source == nullptr || bemi_is_worker)
		return;
	state.StartStatement(StatementCommentContext(source, location, length));
}

// Is this the statement the client sent (not one run by a function or trigger)? The extended
// protocol executes a copy of the client's text, hence the comparison by content.
bool IsTopLevelStatement(const char *source) {
	if (source == nullptr || debug_query_string == nullptr)
		return false;
	return source == debug_query_string || std::strcmp(source, debug_query_string) == 0;
}

// Utility statements that never write user data and must not wait for the slot.
bool UtilityIsHarmless(const Node *stmt) {
	switch (nodeTag(stmt)) {
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

// Utility statements that write rows no executor write hook sees: COPY FROM, TRUNCATE, and
// CREATE TABLE AS / SELECT INTO.
bool UtilityWritesRows(const Node *stmt) {
	return (IsA(stmt, CopyStmt) && castNode(CopyStmt, const_cast<Node *>(stmt))->is_from) ||
	       IsA(stmt, TruncateStmt) || IsA(stmt, CreateTableAsStmt);
}

bool BemiInstalled() {
	return PgCall([]() { return OidIsValid(get_extension_oid("bemi", true)); });
}

// The schema an extension is installed in (get_extension_schema is static before PostgreSQL 16).
// C-style, inside PgCall only.
Oid ExtensionSchema(Oid extension) {
	Relation rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(extension));
	SysScanDesc scan = systable_beginscan(rel, ExtensionOidIndexId, true, nullptr, 1, &key);
	HeapTuple tuple = systable_getnext(scan);
	Oid schema = HeapTupleIsValid(tuple) ? reinterpret_cast<Form_pg_extension>(GETSTRUCT(tuple))->extnamespace : InvalidOid;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return schema;
}

// May this statement drop the extension, here installed, or rebuild its tables? DROP EXTENSION,
// DROP OWNED, DROP SCHEMA ... CASCADE of the extension's schema (schema bemi cannot be dropped:
// the extension requires it), and ALTER EXTENSION bemi UPDATE (whose script locks the trail's
// tables in its own order too).
bool MayDropExtension(const Node *stmt) {
	if (IsA(stmt, DropOwnedStmt))
		return BemiInstalled();
	if (IsA(stmt, AlterExtensionStmt))
		return strcmp(castNode(AlterExtensionStmt, const_cast<Node *>(stmt))->extname, "bemi") == 0 &&
		       BemiInstalled();
	if (!IsA(stmt, DropStmt))
		return false;
	const DropStmt *drop = castNode(DropStmt, const_cast<Node *>(stmt));
	if (drop->removeType == OBJECT_EXTENSION)
		return BemiInstalled();
	if (drop->removeType != OBJECT_SCHEMA || drop->behavior != DROP_CASCADE)
		return false;
	return PgCall([&]() {
		Oid extension = get_extension_oid("bemi", true);
		if (!OidIsValid(extension))
			return false;
		const char *home = get_namespace_name(ExtensionSchema(extension));
		ListCell *cell;
		foreach (cell, drop->objects) {
			const char *name = strVal(lfirst(cell));
			if (home != nullptr && strcmp(name, home) == 0)
				return true;
		}
		return false;
	});
}

bool BeforeUtility(PlannedStmt *pstmt, const char *query_string, bool top_level) {
	const Node *stmt = pstmt->utilityStmt;

	if (top_level)
		StartStatement(query_string, pstmt->stmt_location, pstmt->stmt_len);
	if (!bemi_is_worker && !UtilityIsHarmless(stmt)) {
		if (UtilityWritesRows(stmt))
			BeforeWrite();
		else if (BemiDatabase *db = BemiFindDatabase(MyDatabaseId))
			WaitForCaptureSlot(db);
	}
	GuardTrailUtility(pstmt, query_string);
	GuardDdl(pstmt, query_string);
	return MayDropExtension(stmt);
}

void TransactionEvent(XactEvent event) {
	switch (event) {
	case XACT_EVENT_COMMIT:
	case XACT_EVENT_PARALLEL_COMMIT:
		if (state.Wrote())
			PgCall([]() { BemiWakeWorker(MyDatabaseId); });
		else if (state.LocalUnused())
			PgCall([]() {
				ereport(
				    WARNING,
				    (errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				     errmsg(
				         "bemi_set_context with is_local = true had no effect outside a transaction block"),
				     errhint("Call it after BEGIN, or pass is_local => false to set it for the session.")));
			});
		if (state.DropIsPending())
			PgCall([]() { BemiStopCapture(MyDatabaseId); });
		if (BemiHoldsWorker())
			PgCall([]() { BemiEndHold(); });
		state.TransactionEnded(false);
		break;
	case XACT_EVENT_PREPARE:
		if (BemiHoldsWorker())
			PgCall([]() { BemiEndHold(); });
		state.TransactionEnded(false);
		break;
	case XACT_EVENT_ABORT:
	case XACT_EVENT_PARALLEL_ABORT:
		if (BemiHoldsWorker())
			PgCall([]() { BemiEndHold(); });
		state.TransactionEnded(true);
		break;
	default:
		break;
	}
}

} // namespace

void BeforeDdlWrite() {
	BeforeWrite();
}

} // namespace bemi

extern "C" void BemiSetContext(const Jsonb *context, bool is_local) {
	bemi::Enter([&]() {
		if (context)
			bemi::Validate(context);
		bemi::state.Set(bemi::CopyContext(context), is_local, GetCurrentTransactionNestLevel(),
		                IsTransactionBlock());
	});
}

extern "C" const Jsonb *BemiCurrentContext(void) {
	return bemi::Enter([]() { return bemi::state.Effective(); });
}

extern "C" void BemiBeforeExecutor(const char *source_text, int stmt_location, int stmt_len, bool writes) {
	bemi::Enter([&]() {
		if (bemi::IsTopLevelStatement(source_text))
			bemi::StartStatement(source_text, stmt_location, stmt_len);
		if (writes)
			bemi::BeforeWrite();
	});
}

extern "C" bool BemiBeforeUtility(PlannedStmt *pstmt, const char *query_string, bool top_level) {
	return bemi::Enter([&]() { return bemi::BeforeUtility(pstmt, query_string, top_level); });
}

extern "C" void BemiAfterUtility(void) {
	bemi::Enter([]() {
		if (!bemi::BemiInstalled())
			bemi::state.DropPending();
	});
}

extern "C" void BemiTransactionEvent(XactEvent event) {
	bemi::Enter([&]() { bemi::TransactionEvent(event); });
}

extern "C" void BemiSubtransactionEvent(SubXactEvent event) {
	bemi::Enter([&]() {
		int level = GetCurrentTransactionNestLevel();
		if (event == SUBXACT_EVENT_ABORT_SUB) {
			bemi::state.SubtransactionAborted(level);
			if (BemiHoldsWorker())
				bemi::PgCall([&]() { BemiEndHoldAtLevel(level); });
		}
		else if (event == SUBXACT_EVENT_COMMIT_SUB) {
			bemi::state.SubtransactionCommitted(level);
			BemiHoldToParent(level);
		}
	});
}
