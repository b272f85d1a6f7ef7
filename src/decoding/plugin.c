/*
 * plugin.c: the `bemi` logical decoding output plugin.
 *
 * Each row change becomes a change record: table, operation, primary key, before and after
 * images, and the latest context that preceded it in its transaction (the application's, from any
 * context message; the `_bemi` identity only from a message bemi signed). Inside the worker
 * the records go to the worker's sink; anywhere else (pg_logical_slot_get_changes,
 * pg_recvlogical) each is written as one JSON document. Callbacks never write to the database.
 */
#include "bemi/bemi.h"
#include "bemi/settings.h"
#include "bemi/sink.h"
#include "bemi/decoding.h"
#include "bemi/secret.h"

#include "access/htup_details.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/output_plugin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"

extern void _PG_output_plugin_init(OutputPluginCallbacks *cb);

/* Set by the worker: its replication origin, whose changes are its own writes. */
RepOriginId bemi_worker_origin = InvalidRepOriginId;

/*
 * What the plugin needs to know of a relation, looked up once: where its changes are recorded
 * (a partition under its root by default) and whether they are recorded at all.
 */
typedef struct RelationInfo
{
	Oid relid;        /* hash key */
	bool valid;
	bool own;         /* in schema bemi: the worker's own tables, never recorded */
	Oid recorded_as;  /* the table the changes are recorded under (a partition's root) */
	char *schema;     /* in CacheMemoryContext */
	char *table;
} RelationInfo;

static HTAB *relation_cache = NULL;

/* Any DDL: forget everything (a partition's root may have been renamed). DDL is rare. */
static void
InvalidateRelation(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS scan;
	RelationInfo *info;

	if (relation_cache == NULL)
		return;
	hash_seq_init(&scan, relation_cache);
	while ((info = hash_seq_search(&scan)) != NULL)
		info->valid = false;
}

static RelationInfo *
LookupRelation(Relation rel)
{
	Oid relid = RelationGetRelid(rel);
	RelationInfo *info;
	bool found;

	if (relation_cache == NULL)
	{
		HASHCTL ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RelationInfo);
		ctl.hcxt = CacheMemoryContext;
		relation_cache = hash_create("bemi relations", 128, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(InvalidateRelation, (Datum) 0);
	}
	info = hash_search(relation_cache, &relid, HASH_ENTER, &found);
	if (!found || !info->valid)
	{
		Oid recorded_as = relid;
		char *schema;
		char *table;

		if (found)
		{
			pfree(info->schema);
			pfree(info->table);
		}
		if (rel->rd_rel->relispartition && bemi_partitions_as_root)
		{
			List *ancestors = get_partition_ancestors(relid);

			if (ancestors != NIL)
				recorded_as = llast_oid(ancestors);
		}
		schema = get_namespace_name(get_rel_namespace(recorded_as));
		table = get_rel_name(recorded_as);
		info->recorded_as = recorded_as;
		info->own = strcmp(get_namespace_name(RelationGetNamespace(rel)), "bemi") == 0;
		info->schema = MemoryContextStrdup(CacheMemoryContext, schema ? schema : "");
		info->table = MemoryContextStrdup(CacheMemoryContext, table ? table : RelationGetRelationName(rel));
		info->valid = true;
	}
	return info;
}

typedef struct PluginState
{
	MemoryContext change_context; /* reset after every change */
	MemoryContext txn_context;    /* reset at every transaction start */
	bool to_sink;                 /* running inside the worker */
	char *database;
	Jsonb *context;               /* what changes carry now: application || identity, or NULL */
	Jsonb *application;           /* latest application context of the transaction, or NULL */
	Jsonb *identity;              /* {"_bemi": ...} of the latest verified message, or NULL */
	Jsonb *empty;
	bool skip_txn;                /* already written by an earlier run of the worker */
	bool context_from_trigger;    /* the application context came from an unsigned message */
} PluginState;

/* {"<key>": "<text>"}: what stands in for a context or an image that could not be had. */
static Jsonb *
ReservedNote(const char *key, const char *text)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	escape_json(&buf, key);
	appendStringInfoString(&buf, ": ");
	escape_json(&buf, text);
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* The JSON text of a message as jsonb, or NULL when jsonb_in refuses it. */
static Jsonb *
ParseJson(const char *json)
{
	MemoryContext caller = CurrentMemoryContext;
	Jsonb *volatile parsed = NULL;

	/* jsonb_in only allocates memory: recovering without a subtransaction is safe. */
	PG_TRY();
	{
		parsed = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller);
		FlushErrorState();
		parsed = NULL;
	}
	PG_END_TRY();
	return parsed;
}

/*
 * A message's payload as an application context, under the rules of bemi_set_context: a JSON
 * object of at most bemi.max_context_size bytes (unless bemi's backend signed it: it checked the
 * context when it was set), valid in the database encoding (jsonb_in does not check raw bytes).
 * Anything else becomes a note saying why, without the offending bytes: a message must never stop
 * decoding nor put bytes in the trail that a restore would refuse. The reserved key is removed
 * here; the caller adds the verified identity. *parsed_out is the whole object, or NULL.
 */
static Jsonb *
ApplicationContext(const char *payload, Size size, bool limit_size, Jsonb **parsed_out)
{
	Jsonb *parsed;
	char *json;
	char reason[128];

	*parsed_out = NULL;
	if (limit_size && size > (Size) bemi_max_context_size)
	{
		snprintf(reason, sizeof(reason), "context of %zu bytes is larger than bemi.max_context_size (%d)",
				 (size_t) size, bemi_max_context_size);
		return ReservedNote(BEMI_RESERVED_KEY "_invalid_context", reason);
	}
	if (!pg_verify_mbstr(GetDatabaseEncoding(), payload, (int) size, true))
	{
		snprintf(reason, sizeof(reason), "context is not valid %s", GetDatabaseEncodingName());
		return ReservedNote(BEMI_RESERVED_KEY "_invalid_context", reason);
	}
	json = pnstrdup(payload, size);
	parsed = ParseJson(json);
	pfree(json);
	if (parsed == NULL)
		return ReservedNote(BEMI_RESERVED_KEY "_invalid_context", "context is not valid JSON");
	if (!JB_ROOT_IS_OBJECT(parsed) || JB_ROOT_IS_SCALAR(parsed))
		return ReservedNote(BEMI_RESERVED_KEY "_invalid_context", "context is not a JSON object");
	*parsed_out = parsed;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(parsed),
											  CStringGetTextDatum(BEMI_RESERVED_KEY)));
}

/* A verified message of ours as a JSON object, or NULL if it is not one (then judged in full). */
static Jsonb *
ParsedOwnMessage(const char *payload, Size size)
{
	char *json = pnstrdup(payload, size);
	Jsonb *parsed = ParseJson(json);

	pfree(json);
	if (parsed != NULL && (!JB_ROOT_IS_OBJECT(parsed) || JB_ROOT_IS_SCALAR(parsed)))
		return NULL;
	return parsed;
}

/* {"_bemi": <value of _bemi in the message>} when a verified message has it, else NULL. */
static Jsonb *
IdentityOf(Jsonb *message)
{
	JsonbValue *value;
	JsonbParseState *parse_state = NULL;
	JsonbValue key;

	if (message == NULL)
		return NULL;
	value = getKeyJsonValueFromContainer(&message->root, BEMI_RESERVED_KEY, strlen(BEMI_RESERVED_KEY), NULL);
	if (value == NULL)
		return NULL;
	key.type = jbvString;
	key.val.string.val = BEMI_RESERVED_KEY;
	key.val.string.len = strlen(BEMI_RESERVED_KEY);
	pushJsonbValue(&parse_state, WJB_BEGIN_OBJECT, NULL);
	pushJsonbValue(&parse_state, WJB_KEY, &key);
	pushJsonbValue(&parse_state, WJB_VALUE, value);
	return JsonbValueToJsonb(pushJsonbValue(&parse_state, WJB_END_OBJECT, NULL));
}

static void
bemi_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	PluginState *state = MemoryContextAllocZero(ctx->context, sizeof(PluginState));
	ListCell *option;

	state->change_context = AllocSetContextCreate(ctx->context, "bemi change", ALLOCSET_DEFAULT_SIZES);
	state->txn_context = AllocSetContextCreate(ctx->context, "bemi transaction", ALLOCSET_DEFAULT_SIZES);
	opt->output_type = OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	opt->receive_rewrites = false;

	foreach(option, ctx->output_plugin_options)
	{
		DefElem *elem = lfirst(option);

		if (strcmp(elem->defname, "sink") == 0)
		{
			if (!bemi_sink_active)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"sink\" of the bemi output plugin is only for the bemi worker")));
			state->to_sink = true;
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unknown option \"%s\" for the bemi output plugin", elem->defname),
					 errhint("The bemi output plugin takes no options.")));
	}
	ctx->output_plugin_private = state;
}

static void
bemi_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	PluginState *state = ctx->output_plugin_private;

	MemoryContextReset(state->txn_context);
	state->context = NULL;
	state->application = NULL;
	state->identity = NULL;
	state->context_from_trigger = false;
	if (state->database == NULL)
		state->database = MemoryContextStrdup(ctx->context, get_database_name(MyDatabaseId));
	if (state->empty == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(ctx->context);

		state->empty = BemiEmptyImage();
		MemoryContextSwitchTo(old);
	}
	state->skip_txn = state->to_sink && BemiSinkSkipTransaction(txn->end_lsn);
	if (state->to_sink && !state->skip_txn)
		BemiSinkBegin(txn->xid, txn->end_lsn, txn->xact_time.commit_time);
}

static void
bemi_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	PluginState *state = ctx->output_plugin_private;

	if (state->to_sink && !state->skip_txn)
		BemiSinkCommit(txn->end_lsn);
	MemoryContextReset(state->txn_context);
	state->context = NULL;
	state->application = NULL;
	state->identity = NULL;
}

/*
 * Frees the jsonb values the state no longer points to, each once (jsonb_concat and jsonb_delete
 * may return one of their arguments, so the candidates can repeat).
 */
static void
FreeUnused(PluginState *state, Jsonb **candidates, int n)
{
	for (int i = 0; i < n; i++)
	{
		Jsonb *j = candidates[i];
		bool seen = false;

		for (int k = 0; k < i; k++)
			seen |= candidates[k] == j;
		if (j && !seen && j != state->context && j != state->application && j != state->identity &&
			j != state->empty)
			pfree(j);
	}
}

/*
 * A context message: ours (prefix "bemi") or one from Bemi's row trigger (prefix "_bemi"), but
 * any role can emit either. Only a message whose MAC verifies for this transaction (txn is the
 * top-level transaction: the reorder buffer replays subtransactions' changes under it) may set
 * the `_bemi` identity; any other message sets the application context only, and can neither
 * remove nor replace the identity.
 */
static void
bemi_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn, bool transactional,
			 const char *prefix, Size size, const char *message)
{
	PluginState *state = ctx->output_plugin_private;
	MemoryContext old;
	const char *payload;
	Size payload_len;
	bool verified;
	Jsonb *parsed;
	Jsonb *application;
	Jsonb *prev_context = state->context;
	Jsonb *prev_application = state->application;
	Jsonb *prev_identity = state->identity;

	if (!transactional || txn == NULL || state->skip_txn)
		return;
	if (strcmp(prefix, BEMI_MESSAGE_PREFIX) != 0 && strcmp(prefix, BEMI_TRIGGER_MESSAGE_PREFIX) != 0)
		return;
	old = MemoryContextSwitchTo(state->txn_context);
	/* A look-alike of ours with a wrong MAC is judged by its payload, like any other message. */
	verified = BemiVerifyMessage(txn->xid, message, size, &payload, &payload_len) &&
		strcmp(prefix, BEMI_MESSAGE_PREFIX) == 0;
	/*
	 * The common case, once per writing transaction: our own message, built by our backend as the
	 * application's object followed by its identity. It is the context as it stands; taking it
	 * apart and putting it together again would cost two jsonb rebuilds for nothing.
	 */
	parsed = verified && !state->context_from_trigger ? ParsedOwnMessage(payload, payload_len) : NULL;
	if (parsed != NULL)
	{
		Jsonb *identity = IdentityOf(parsed);

		if (identity != NULL || state->identity == NULL)
		{
			Jsonb *candidates[] = {prev_context, prev_application, prev_identity};

			state->identity = identity;
			state->application = state->context = parsed;
			FreeUnused(state, candidates, lengthof(candidates));
			MemoryContextSwitchTo(old);
			if (state->to_sink)
				BemiSinkContext(state->context);
			return;
		}
	}
	application = ApplicationContext(payload, payload_len, !verified, &parsed);
	if (verified)
	{
		Jsonb *identity = IdentityOf(parsed);

		if (identity)
			state->identity = identity;
		/*
		 * Bemi's row trigger sends the application's context in its own messages. When ours
		 * that follows carries only the writer's identity, it adds to that context rather than
		 * erasing it.
		 */
		if (!(state->context_from_trigger && state->application && JB_ROOT_COUNT(application) == 0))
		{
			state->application = application;
			state->context_from_trigger = false;
		}
	}
	else
	{
		state->application = application;
		state->context_from_trigger = true;
	}
	if (state->identity == NULL)
		state->context = state->application;
	else
		state->context = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(state->application),
															JsonbPGetDatum(state->identity)));
	/* Bemi's trigger sends one message per row: what is replaced is freed, memory stays flat. */
	{
		Jsonb *candidates[] = {prev_context, prev_application, prev_identity, application, parsed};

		FreeUnused(state, candidates, lengthof(candidates));
	}
	MemoryContextSwitchTo(old);
	if (state->to_sink)
		BemiSinkContext(state->context);
}

static void
AppendField(StringInfo out, const char *name, const char *value, bool quote)
{
	appendStringInfo(out, "%s\"%s\": ", out->len > 1 ? ", " : "", name);
	if (value == NULL)
		appendStringInfoString(out, "null");
	else if (quote)
		escape_json(out, value);
	else
		appendStringInfoString(out, value);
}

static const char *
JsonbText(Jsonb *j)
{
	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

/* Outside the worker: one JSON document per change, with the fields of a bemi.changes row. */
static void
WriteChange(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn, const BemiChange *change)
{
	PluginState *state = ctx->output_plugin_private;
	StringInfo out;
	char number[32];

	OutputPluginPrepareWrite(ctx, true);
	out = ctx->out;
	appendStringInfoChar(out, '{');
	AppendField(out, "primary_key", change->primary_key ? text_to_cstring(change->primary_key) : NULL, true);
	AppendField(out, "before", JsonbText(change->before), false);
	AppendField(out, "after", JsonbText(change->after), false);
	AppendField(out, "context", JsonbText(state->context ? state->context : state->empty), false);
	AppendField(out, "database", state->database, true);
	AppendField(out, "schema", change->schema, true);
	AppendField(out, "table", change->table, true);
	AppendField(out, "operation", change->operation, true);
	AppendField(out, "committed_at", timestamptz_to_str(txn->xact_time.commit_time), true);
	snprintf(number, sizeof(number), "%u", txn->xid);
	AppendField(out, "transaction_id", number, false);
	snprintf(number, sizeof(number), "%X/%X", LSN_FORMAT_ARGS(lsn));
	AppendField(out, "position", number, true);
	appendStringInfoChar(out, '}');
	OutputPluginWrite(ctx, true);
}

static void
EmitChange(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn, BemiChange *change)
{
	PluginState *state = ctx->output_plugin_private;

	if (state->to_sink)
		BemiSinkChange(lsn, change);
	else
		WriteChange(ctx, txn, lsn, change);
}

#if PG_VERSION_NUM >= 170000
#define CHANGE_TUPLE(t) (t)
#else
#define CHANGE_TUPLE(t) ((t) ? &(t)->tuple : NULL)
#endif

/*
 * A row whose image cannot be built (a value past jsonb's 256 MB limit, say) must not stop
 * capture: the change is recorded with the reason instead of the image. Building an image only
 * allocates memory, so recovering without a subtransaction is safe.
 */
static Jsonb *
SafeImage(Relation rel, HeapTuple tuple, HeapTuple old_tuple)
{
	MemoryContext caller = CurrentMemoryContext;
	Jsonb *volatile image = NULL;
	char *volatile reason = NULL;

	PG_TRY();
	{
		image = BemiImageFromTuple(rel, tuple, old_tuple);
	}
	PG_CATCH();
	{
		ErrorData *error;

		MemoryContextSwitchTo(caller);
		error = CopyErrorData();
		FlushErrorState();
		reason = error->message;
	}
	PG_END_TRY();
	if (image == NULL)
	{
		ereport(WARNING,
				(errmsg("bemi: could not build the image of a row of \"%s\": %s", RelationGetRelationName(rel),
						reason)));
		image = ReservedNote(BEMI_RESERVED_KEY "_image_error", reason);
	}
	return image;
}

static Jsonb *
OldImage(Relation rel, HeapTuple old_tuple)
{
	Jsonb *image = SafeImage(rel, old_tuple, NULL);

	if (rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL)
		return image;
	return BemiIdentityImage(rel, image);
}

static void
bemi_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, Relation rel, ReorderBufferChange *change)
{
	PluginState *state = ctx->output_plugin_private;
	MemoryContext old;
	BemiChange record;
	RelationInfo *info;
	HeapTuple new_tuple = CHANGE_TUPLE(change->data.tp.newtuple);
	HeapTuple old_tuple = CHANGE_TUPLE(change->data.tp.oldtuple);

	if (state->skip_txn)
		return;
	info = LookupRelation(rel);
	if (info->own)
		return;
	old = MemoryContextSwitchTo(state->change_context);
	record.table_oid = info->recorded_as;
	record.schema = info->schema;
	record.table = info->table;
	record.before = state->empty;
	record.after = state->empty;
	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			record.operation = "CREATE";
			if (new_tuple)
				record.after = SafeImage(rel, new_tuple, NULL);
			record.primary_key = BemiPrimaryKey(rel, record.after);
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			record.operation = "UPDATE";
			if (old_tuple)
				record.before = OldImage(rel, old_tuple);
			if (new_tuple)
				record.after = SafeImage(rel, new_tuple, old_tuple);
			record.primary_key = BemiPrimaryKey(rel, record.after);
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			record.operation = "DELETE";
			if (old_tuple)
				record.before = OldImage(rel, old_tuple);
			record.primary_key = BemiPrimaryKey(rel, record.before);
			break;
		default:
			elog(ERROR, "bemi: unexpected change type %d", change->action);
	}
	EmitChange(ctx, txn, change->lsn, &record);
	MemoryContextSwitchTo(old);
	MemoryContextReset(state->change_context);
}

static void
bemi_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, int nrelations, Relation relations[],
			  ReorderBufferChange *change)
{
	PluginState *state = ctx->output_plugin_private;

	if (state->skip_txn)
		return;
	for (int i = 0; i < nrelations; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(state->change_context);
		RelationInfo *info = LookupRelation(relations[i]);
		BemiChange record;
		bool seen = false;

		/* Partitions of one root truncated together are one TRUNCATE of the root. */
		for (int j = 0; j < i; j++)
		{
			RelationInfo *other = LookupRelation(relations[j]);

			if (other->recorded_as == info->recorded_as)
				seen = true;
		}
		record.table_oid = info->recorded_as;
		record.schema = info->schema;
		if (!info->own && !seen)
		{
			record.table = info->table;
			record.operation = "TRUNCATE";
			record.primary_key = NULL;
			record.before = state->empty;
			record.after = state->empty;
			EmitChange(ctx, txn, change->lsn, &record);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(state->change_context);
	}
}

/* Inside the worker, its own writes carry its origin and are skipped. */
static bool
bemi_filter_by_origin(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	PluginState *state = ctx->output_plugin_private;

	return state->to_sink && origin_id != InvalidRepOriginId && origin_id == bemi_worker_origin;
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = bemi_startup;
	cb->begin_cb = bemi_begin;
	cb->change_cb = bemi_change;
	cb->truncate_cb = bemi_truncate;
	cb->message_cb = bemi_message;
	cb->commit_cb = bemi_commit;
	cb->filter_by_origin_cb = bemi_filter_by_origin;
}
