/*
 * plugin_shim.c: the `bemi` logical decoding output plugin as PostgreSQL sees it. Runs in any
 * decoding process: the worker (which feeds its sink) and any session reading a slot with the
 * bemi plugin (pg_logical_slot_get_changes, pg_recvlogical). Each callback hands over to the C++
 * core (plugin.cpp, session.cpp), which turns row changes into change records.
 */
#include "postgres.h"

#include "fmgr.h"

#include "bemi/worker.h"
#include "plugin.h"

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

/* Set by the worker: its replication origin, whose changes are its own writes. */
RepOriginId bemi_worker_origin = InvalidRepOriginId;

static void
bemi_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	BemiPluginStartup(ctx, opt, is_init);
}

static void
bemi_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	BemiPluginBegin(ctx, txn);
}

static void
bemi_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	BemiPluginCommit(ctx, txn);
}

static void
bemi_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel, ReorderBufferChange *change)
{
	BemiPluginChange(ctx, txn, rel, change);
}

static void
bemi_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations, Relation relations[],
			  ReorderBufferChange *change)
{
	BemiPluginTruncate(ctx, txn, nrelations, relations, change);
}

static void
bemi_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn, bool transactional,
			 const char *prefix, Size size, const char *message)
{
	BemiPluginMessage(ctx, txn, lsn, transactional, prefix, size, message);
}

static bool
bemi_filter_by_origin(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	return BemiPluginFilterByOrigin(ctx, origin_id);
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	AssertVariableIsOfType(&_PG_output_plugin_init, LogicalOutputPluginInit);
	cb->startup_cb = bemi_startup;
	cb->begin_cb = bemi_begin;
	cb->change_cb = bemi_change;
	cb->truncate_cb = bemi_truncate;
	cb->message_cb = bemi_message;
	cb->commit_cb = bemi_commit;
	cb->filter_by_origin_cb = bemi_filter_by_origin;
}

PG_FUNCTION_INFO_V1(bemi_json_is_text);

/*
 * bemi_json_is_text(regtype) → boolean: does bemi record values of this type as their output
 * text, because to_jsonb would run a function an ordinary role could have written? Time travel
 * renders primary keys with it exactly as the images were built, and without calling that
 * function itself (it may be run by a superuser on an untrusted role's table).
 */
Datum
bemi_json_is_text(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(BemiJsonIsText(PG_GETARG_OID(0)));
}
