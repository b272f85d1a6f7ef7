// session.cpp: the bemi output plugin's work in one decoding session (see session.hpp).
//
// Each row change becomes a change record: table, operation, primary key, before and after
// images, and the latest context that preceded it in its transaction (the application's, from any
// context message; the `_bemi` identity only from a message bemi signed). Inside the worker the
// records go to the worker's sink; anywhere else (pg_logical_slot_get_changes, pg_recvlogical)
// each is written as one JSON document. Callbacks never write to the database.
//
// Runs under bemi::Enter (plugin.cpp). PostgreSQL work goes through PgCall in units: one per
// image, one to key and emit a change, a few per context message.
#include "session.hpp"

#include <cstring>
#include <fmt/format.h>
#include <new>
#include <string>
#include <vector>

#include "image.hpp"
#include "relations.hpp"
#include "rules.hpp"

extern "C" {
#include "bemi/bemi.h"
#include "bemi/secret.h"
#include "bemi/settings.h"
#include "bemi/snapshot.h"
#include "bemi/sink.h"
#include "bemi/worker.h"
#include "commands/dbcommands.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "replication/origin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
}

#if PG_VERSION_NUM >= 170000
#define CHANGE_TUPLE(t) (t)
#else
#define CHANGE_TUPLE(t) ((t) ? &(t)->tuple : nullptr)
#endif

namespace bemi {
namespace {

// Raw PostgreSQL helpers below: called only inside PgCall, they own nothing.

// {"_bemi": <value of _bemi in the message>} when a verified message has it, else nullptr.
Jsonb *IdentityOf(Jsonb *message) {
	if (message == nullptr)
		return nullptr;
	JsonbValue *value =
	    getKeyJsonValueFromContainer(&message->root, BEMI_RESERVED_KEY, strlen(BEMI_RESERVED_KEY), nullptr);
	if (value == nullptr)
		return nullptr;
	JsonbParseState *parse_state = nullptr;
	JsonbValue key;
	key.type = jbvString;
	key.val.string.val = const_cast<char *>(BEMI_RESERVED_KEY);
	key.val.string.len = strlen(BEMI_RESERVED_KEY);
	pushJsonbValue(&parse_state, WJB_BEGIN_OBJECT, nullptr);
	pushJsonbValue(&parse_state, WJB_KEY, &key);
	pushJsonbValue(&parse_state, WJB_VALUE, value);
	return JsonbValueToJsonb(pushJsonbValue(&parse_state, WJB_END_OBJECT, nullptr));
}

// The role and application_name of a verified identity {"_bemi": {"role": ..., ...}}, pointing
// into it; empty when absent. The role is the one outside SECURITY DEFINER functions: the
// identity's caller when it has one, else its role (who called the function wrote; the function's
// owner only lent it rights).
struct Writer {
	const char *role;
	int role_len;
	const char *application_name;
	int application_name_len;
};

void StringField(JsonbContainer *object, const char *key, const char **value, int *len) {
	JsonbValue found;
	*value = "";
	*len = 0;
	if (getKeyJsonValueFromContainer(object, key, strlen(key), &found) != nullptr &&
	    found.type == jbvString) {
		*value = found.val.string.val;
		*len = found.val.string.len;
	}
}

Writer WriterOf(Jsonb *identity) {
	Writer writer = {"", 0, "", 0};
	JsonbValue inner;
	if (getKeyJsonValueFromContainer(&identity->root, BEMI_RESERVED_KEY, strlen(BEMI_RESERVED_KEY), &inner) ==
	        nullptr ||
	    inner.type != jbvBinary)
		return writer;
	StringField(inner.val.binary.data, "caller", &writer.role, &writer.role_len);
	if (writer.role_len == 0)
		StringField(inner.val.binary.data, "role", &writer.role, &writer.role_len);
	StringField(inner.val.binary.data, "application_name", &writer.application_name,
	            &writer.application_name_len);
	return writer;
}

bool IsObject(Jsonb *j) {
	return JB_ROOT_IS_OBJECT(j) && !JB_ROOT_IS_SCALAR(j);
}

void AppendField(StringInfo out, const char *name, const char *value, bool quote) {
	appendStringInfo(out, "%s\"%s\": ", out->len > 1 ? ", " : "", name);
	if (value == nullptr)
		appendStringInfoString(out, "null");
	else if (quote)
		escape_json(out, value);
	else
		appendStringInfoString(out, value);
}

const char *JsonbText(Jsonb *j) {
	return JsonbToCString(nullptr, &j->root, VARSIZE(j));
}

// Outside the worker: one JSON document per change, with the fields of a bemi.changes row.
void WriteChange(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn, const BemiChange *change,
                 Jsonb *context, const char *database) {
	char number[32];

	OutputPluginPrepareWrite(ctx, true);
	StringInfo out = ctx->out;
	appendStringInfoChar(out, '{');
	AppendField(out, "primary_key", change->primary_key ? text_to_cstring(change->primary_key) : nullptr,
	            true);
	AppendField(out, "before", JsonbText(change->before), false);
	AppendField(out, "after", JsonbText(change->after), false);
	AppendField(out, "context", JsonbText(context), false);
	AppendField(out, "database", database, true);
	AppendField(out, "schema", change->schema, true);
	AppendField(out, "table", change->table, true);
	AppendField(out, "operation", change->operation, true);
	AppendField(out, "committed_at", timestamptz_to_str(txn->xact_time.commit_time), true);
	snprintf(number, sizeof(number), "%u", txn->xid);
	AppendField(out, "transaction_id", number, false);
	snprintf(number, sizeof(number), "%X/%X", (uint32)(lsn >> 32), (uint32)lsn);
	AppendField(out, "position", number, true);
	appendStringInfoChar(out, '}');
	OutputPluginWrite(ctx, true);
}

} // namespace

void Session::Start(LogicalDecodingContext *ctx, OutputPluginOptions *opt) {
	bool to_sink = false;
	// A session may start anywhere in the WAL: the rules are read again as of its first change.
	Rules::Get().Drop();
	ListCell *option;

	foreach (option, ctx->output_plugin_options) {
		auto elem = static_cast<DefElem *>(lfirst(option));
		if (strcmp(elem->defname, "sink") != 0)
			throw Error(ERRCODE_INVALID_PARAMETER_VALUE,
			            fmt::format("unknown option \"{}\" for the bemi output plugin", elem->defname), {},
			            "The bemi output plugin takes no options.");
		if (!bemi_sink_active)
			throw Error(ERRCODE_INVALID_PARAMETER_VALUE,
			            "option \"sink\" of the bemi output plugin is only for the bemi worker");
		to_sink = true;
	}
	static_assert(std::is_trivially_destructible_v<Session>, "a Session goes with its memory context");
	void *memory = PgCall([&]() { return palloc0(sizeof(Session)); });
	Session *session = new (memory) Session(ctx);
	session->to_sink_ = to_sink;
	PgCall([&]() {
		session->change_context_ = AllocSetContextCreate(ctx->context, "bemi change", ALLOCSET_DEFAULT_SIZES);
		session->txn_context_ =
		    AllocSetContextCreate(ctx->context, "bemi transaction", ALLOCSET_DEFAULT_SIZES);
	});
	opt->output_type = OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	opt->receive_rewrites = false;
	ctx->output_plugin_private = session;
}

void Session::ClearContext() {
	writer_identity_ = nullptr;
	context_ = nullptr;
	application_ = nullptr;
	identity_ = nullptr;
}

void Session::Begin(ReorderBufferTXN *txn) {
	ClearContext();
	context_from_trigger_ = false;
	PgCall([&]() {
		MemoryContextReset(txn_context_);
		if (database_ == nullptr)
			database_ = MemoryContextStrdup(ctx_->context, get_database_name(MyDatabaseId));
		if (empty_ == nullptr) {
			MemoryContext old = MemoryContextSwitchTo(ctx_->context);
			empty_ = EmptyImage();
			MemoryContextSwitchTo(old);
		}
		skip_txn_ = to_sink_ && BemiSinkSkipTransaction(txn->end_lsn);
		skipped_ = {};
		if (to_sink_ && !skip_txn_)
			BemiSinkBegin(txn->xid, txn->end_lsn, txn->xact_time.commit_time);
	});
}

void Session::Commit(ReorderBufferTXN *txn) {
	PgCall([&]() {
		if (to_sink_ && !skip_txn_)
			BemiSinkCommit(txn->end_lsn, &skipped_);
		MemoryContextReset(txn_context_);
	});
	ClearContext();
}

bool Session::SkipsOrigin(RepOriginId origin) const {
	// The worker's own writes: its origin, and DoNotReplicateId, which its writer processes
	// (bemi.writers) tag theirs with (src/worker/writers.cpp).
	return to_sink_ && origin != InvalidRepOriginId && (origin == bemi_worker_origin || origin == DoNotReplicateId);
}

// A context message: ours (prefix "bemi") or one from Bemi's row trigger (prefix "_bemi"), but any
// role can emit either. Only a message whose MAC verifies for this transaction (txn is the
// top-level transaction: the reorder buffer replays subtransactions' changes under it) may set the
// `_bemi` identity; any other message sets the application context only, and can neither remove
// nor replace the identity.
//
// A chunk of bemi_snapshot's worker (prefix "bemi_snapshot") carries rows, not a context.
//
// A schema change (prefix "bemi_ddl") becomes a change of its own (session_ddl.cpp).
void Session::Message(ReorderBufferTXN *txn, XLogRecPtr lsn, bool transactional, const char *prefix, Size size,
                      const char *message) {
	if (!transactional || txn == nullptr || skip_txn_)
		return;
	if (strcmp(prefix, BEMI_SNAPSHOT_PREFIX) == 0) {
		SnapshotMessage(txn, lsn, size, message);
		return;
	}
	if (strcmp(prefix, BEMI_DDL_MESSAGE_PREFIX) == 0) {
		Ddl(txn, lsn, size, message);
		return;
	}
	bool ours = strcmp(prefix, BEMI_MESSAGE_PREFIX) == 0;
	if (!ours && strcmp(prefix, BEMI_TRIGGER_MESSAGE_PREFIX) != 0)
		return;
	// Everything the message builds lives in the transaction's context (left switched on an
	// error, as a C callback would leave it: PostgreSQL's error recovery resets it).
	MemoryContext old = MemoryContextSwitchTo(txn_context_);
	MessageInTxn(txn, ours, size, message);
	MemoryContextSwitchTo(old);
	if (to_sink_)
		PgCall([&]() { BemiSinkContext(context_); });
}

Session::Payload Session::Verify(ReorderBufferTXN *txn, Size size, const char *message) {
	return PgCall([&]() {
		Payload p = {false, nullptr, 0};
		p.verified = BemiVerifyMessage(txn->xid, message, size, &p.data, &p.len);
		return p;
	});
}

void Session::MessageInTxn(ReorderBufferTXN *txn, bool ours, Size size, const char *message) {
	Jsonb *previous[] = {context_, application_, identity_};
	// A look-alike of ours with a wrong MAC is judged by its payload, like any other message.
	Payload payload = Verify(txn, size, message);
	payload.verified = payload.verified && ours;
	// The common case, once per writing transaction: our own message, built by our backend as the
	// application's object followed by its identity. It is the context as it stands; taking it
	// apart and putting it together again would cost two jsonb rebuilds for nothing.
	Jsonb *own =
	    payload.verified && !context_from_trigger_ ? ParseObject(payload.data, payload.len) : nullptr;
	if (own != nullptr) {
		Jsonb *identity = PgCall([&]() { return IdentityOf(own); });
		if (identity != nullptr || identity_ == nullptr) {
			Replace(own, own, identity, previous, 3);
			return;
		}
	}
	Judged judged = JudgeApplicationContext(payload.data, payload.len, !payload.verified);
	Jsonb *application = application_;
	Jsonb *identity = identity_;
	if (payload.verified) {
		Jsonb *verified_identity = PgCall([&]() { return IdentityOf(judged.parsed); });
		if (verified_identity != nullptr)
			identity = verified_identity;
		// Bemi's row trigger sends the application's context in its own messages. When ours that
		// follows carries only the writer's identity, it adds to that context rather than erasing
		// it.
		if (!(context_from_trigger_ && application_ != nullptr && JB_ROOT_COUNT(judged.application) == 0)) {
			application = judged.application;
			context_from_trigger_ = false;
		}
	} else {
		application = judged.application;
		context_from_trigger_ = true;
	}
	Jsonb *context = identity == nullptr ? application : PgCall([&]() {
		return DatumGetJsonbP(
		    DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(application), JsonbPGetDatum(identity)));
	});
	// Bemi's trigger sends one message per row: what is replaced is freed, memory stays flat.
	Jsonb *candidates[] = {previous[0], previous[1], previous[2], judged.application, judged.parsed, own};
	Replace(context, application, identity, candidates, 6);
}

// Sets what changes carry now, and frees the candidates the session no longer points to, each
// once (jsonb_concat and jsonb_delete may return one of their arguments, so they can repeat).
void Session::Replace(Jsonb *context, Jsonb *application, Jsonb *identity, Jsonb *const *candidates, int n) {
	writer_identity_ = nullptr; // what was judged may be freed below, its address reused
	context_ = context;
	application_ = application;
	identity_ = identity;
	PgCall([&]() {
		for (int i = 0; i < n; i++) {
			Jsonb *j = candidates[i];
			bool seen = false;
			for (int k = 0; k < i; k++)
				seen |= candidates[k] == j;
			if (j && !seen && j != context_ && j != application_ && j != identity_ && j != empty_)
				pfree(j);
		}
	});
}

// The message's JSON as jsonb, or nullptr when jsonb_in refuses it.
Jsonb *Session::ParseJson(const char *payload, Size size) {
	char *json = PgCall([&]() { return pnstrdup(payload, size); });
	Jsonb *parsed = nullptr;
	ErrorData *refused = nullptr;
	try {
		// jsonb_in only allocates memory: recovering without a subtransaction is safe.
		parsed =
		    PgCall([&]() { return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json))); });
	} catch (const PgError &e) {
		refused = e.data();
	}
	PgCall([&]() {
		pfree(json);
		if (refused != nullptr)
			FreeErrorData(refused);
	});
	return parsed;
}

// The message's JSON as jsonb, or nullptr when jsonb_in refuses it or it is not an object.
Jsonb *Session::ParseObject(const char *payload, Size size) {
	Jsonb *parsed = ParseJson(payload, size);
	if (parsed != nullptr && !IsObject(parsed)) {
		PgCall([&]() { pfree(parsed); });
		parsed = nullptr;
	}
	return parsed;
}

Jsonb *Session::Note(const char *key, const char *reason) {
	return PgCall([&]() { return ReservedNote(key, reason); });
}

// A message's payload as an application context, under the rules of bemi_set_context: a JSON
// object of at most bemi.max_context_size bytes (unless bemi's backend signed it: it checked the
// context when it was set), valid in the database encoding (jsonb_in does not check raw bytes).
// Anything else becomes a note saying why, without the offending bytes: a message must never stop
// decoding nor put bytes in the trail that a restore would refuse. The reserved key is removed
// here; the caller adds the verified identity.
Session::Judged Session::JudgeApplicationContext(const char *payload, Size size, bool limit_size) {
	const char *key = BEMI_RESERVED_KEY "_invalid_context";
	if (limit_size && size > (Size)bemi_max_context_size) {
		std::string reason = fmt::format("context of {} bytes is larger than bemi.max_context_size ({})",
		                                 size_t(size), bemi_max_context_size);
		return {Note(key, reason.c_str()), nullptr};
	}
	if (!pg_verify_mbstr(GetDatabaseEncoding(), payload, (int)size, true)) {
		std::string reason = fmt::format("context is not valid {}", GetDatabaseEncodingName());
		return {Note(key, reason.c_str()), nullptr};
	}
	Jsonb *parsed = ParseJson(payload, size);
	if (parsed == nullptr)
		return {Note(key, "context is not valid JSON"), nullptr};
	if (!IsObject(parsed)) {
		PgCall([&]() { pfree(parsed); });
		return {Note(key, "context is not a JSON object"), nullptr};
	}
	Jsonb *application = PgCall([&]() {
		return DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(parsed),
		                                          CStringGetTextDatum(BEMI_RESERVED_KEY)));
	});
	return {application, parsed};
}

// A row whose image cannot be built (a value past jsonb's 256 MB limit, say) must not stop
// capture: the change is recorded with the reason instead of the image. Building an image only
// allocates memory, so recovering without a subtransaction is safe. In the change's context.
Jsonb *Session::Image(Relation rel, const RecordedRelation &plan, HeapTuple tuple, HeapTuple old_tuple) {
	try {
		return PgCall([&]() { return ImageOf(plan, rel, tuple, old_tuple); });
	} catch (const PgError &e) {
		const char *reason = e.data()->message;
		return PgCall([&]() {
			ereport(WARNING, (errmsg("bemi: could not build the image of a row of \"%s\": %s",
			                         RelationGetRelationName(rel), reason)));
			return ReservedNote(BEMI_RESERVED_KEY "_image_error", reason);
		});
	}
}

// Raw: to the sink inside the worker, as text anywhere else. Inside PgCall.
void Session::Emit(ReorderBufferTXN *txn, XLogRecPtr lsn, const BemiChange *change) {
	if (to_sink_)
		BemiSinkChange(lsn, change);
	else
		WriteChange(ctx_, txn, lsn, change, context_ ? context_ : empty_, database_);
}

// Whether the transaction's verified writer is one an ignore_writer rule names. Judged once per
// identity and rules.
bool Session::WriterIgnored(const Rules &rules) {
	if (!rules.HasWriterRules() || identity_ == nullptr)
		return false;
	if (writer_identity_ == identity_ && writer_generation_ == rules.generation())
		return writer_ignored_;
	Jsonb *identity = identity_;
	Writer writer = PgCall([&]() { return WriterOf(identity); });
	writer_ignored_ =
	    rules.IgnoresWriter(std::string_view(writer.role, writer.role_len),
	                        std::string_view(writer.application_name, writer.application_name_len));
	writer_identity_ = identity_;
	writer_generation_ = rules.generation();
	return writer_ignored_;
}

// The rules in force for this change, and its relation's entry under them. A change of bemi.rules
// drops the rules: the next change reads them as of its own snapshot, so a rule applies from
// exactly the change after it, even in a transaction already written (skipped) by an earlier run.
const RecordedRelation &Session::Plan(ReorderBufferTXN *txn, Relation rel, Rules **rules) {
	RelationCache &cache = RelationCache::Get();
	cache.Sweep();
	Rules &current = Rules::Get();
	current.Refresh(txn->xid);
	const RecordedRelation &plan = cache.Lookup(rel, &current);
	if (plan.rules_table())
		current.Drop(txn->xid);
	*rules = &current;
	return plan;
}

void Session::Change(ReorderBufferTXN *txn, Relation rel, ReorderBufferChange *change) {
	Rules *rules = nullptr;
	const RecordedRelation &plan = Plan(txn, rel, &rules);
	if (skip_txn_ || plan.own())
		return;
	if (plan.ignored()) {
		skipped_.table_rules++;
		return;
	}
	if (!plan.rules_table() && WriterIgnored(*rules)) {
		skipped_.writer_rules++;
		return;
	}

	HeapTuple new_tuple = CHANGE_TUPLE(change->data.tp.newtuple);
	HeapTuple old_tuple = CHANGE_TUPLE(change->data.tp.oldtuple);
	bool full_identity = rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL;
	// ignore with columns: only an old row with every column (REPLICA IDENTITY FULL) tells which
	// columns an UPDATE changed; without one, the UPDATE is recorded.
	if (change->action == REORDER_BUFFER_CHANGE_UPDATE && plan.has_ignorable() && full_identity &&
	    old_tuple && new_tuple) {
		bool skip = PgCall([&]() {
			MemoryContext old = MemoryContextSwitchTo(change_context_);
			bool only = ChangesOnlyIgnorable(plan, rel, old_tuple, new_tuple);
			MemoryContextSwitchTo(old);
			MemoryContextReset(change_context_);
			return only;
		});
		if (skip) {
			skipped_.column_rules++;
			return;
		}
	}
	BemiChange record = {};
	bool keyed_by_after = true; // which image the primary key is read from
	record.table_oid = plan.recorded_as();
	record.schema = plan.schema();
	record.table = plan.table();
	record.before = empty_;
	record.after = empty_;

	// Everything the change builds lives in its context, reset once it is emitted (left switched
	// on an error, as a C callback would leave it: PostgreSQL's error recovery resets it).
	MemoryContext old = MemoryContextSwitchTo(change_context_);
	switch (change->action) {
	case REORDER_BUFFER_CHANGE_INSERT:
		record.operation = "CREATE";
		if (new_tuple)
			record.after = Image(rel, plan, new_tuple, nullptr);
		break;
	case REORDER_BUFFER_CHANGE_UPDATE:
		record.operation = "UPDATE";
		if (old_tuple)
			record.before = Image(rel, plan, old_tuple, nullptr);
		if (new_tuple)
			record.after = Image(rel, plan, new_tuple, old_tuple);
		break;
	case REORDER_BUFFER_CHANGE_DELETE:
		record.operation = "DELETE";
		if (old_tuple)
			record.before = Image(rel, plan, old_tuple, nullptr);
		keyed_by_after = false;
		break;
	default:
		throw Error(ERRCODE_INTERNAL_ERROR,
		            fmt::format("bemi: unexpected change type {}", int(change->action)));
	}
	PgCall([&]() {
		// Without REPLICA IDENTITY FULL an old row holds only the identity columns.
		if (old_tuple && !full_identity)
			record.before = IdentityImage(rel, record.before);
		record.primary_key = PrimaryKeyText(plan, keyed_by_after ? record.after : record.before);
		Emit(txn, change->lsn, &record);
		MemoryContextSwitchTo(old);
		MemoryContextReset(change_context_);
	});
}

void Session::Truncate(ReorderBufferTXN *txn, int nrelations, Relation relations[],
                       ReorderBufferChange *change) {
	RelationCache &cache = RelationCache::Get();
	cache.Sweep();
	Rules &rules = Rules::Get();
	rules.Refresh(txn->xid);
	std::vector<const RecordedRelation *> plans;
	plans.reserve(nrelations);
	bool rules_truncated = false;
	for (int i = 0; i < nrelations; i++) {
		plans.push_back(&cache.Lookup(relations[i], &rules));
		rules_truncated |= plans.back()->rules_table();
	}
	if (rules_truncated)
		rules.Drop(txn->xid);
	if (skip_txn_)
		return;
	bool writer_ignored = WriterIgnored(rules);

	for (int i = 0; i < nrelations; i++) {
		const RecordedRelation &plan = *plans[i];
		bool seen = false;
		// Partitions of one root truncated together are one TRUNCATE of the root.
		for (int j = 0; j < i; j++)
			seen |= plans[j]->recorded_as() == plan.recorded_as();
		if (plan.own() || seen)
			continue;
		if (plan.ignored() || (writer_ignored && !plan.rules_table())) {
			(plan.ignored() ? skipped_.table_rules : skipped_.writer_rules)++;
			continue;
		}
		BemiChange record = {};
		record.table_oid = plan.recorded_as();
		record.schema = plan.schema();
		record.table = plan.table();
		record.operation = "TRUNCATE";
		record.primary_key = nullptr;
		record.before = empty_;
		record.after = empty_;
		PgCall([&]() {
			MemoryContext old = MemoryContextSwitchTo(change_context_);
			Emit(txn, change->lsn, &record);
			MemoryContextSwitchTo(old);
			MemoryContextReset(change_context_);
		});
	}
}

} // namespace bemi
