// multi_insert.cpp: a batch's rows into bemi.changes through PostgreSQL's table-level batch insert
// (runs in the worker, inside the one PgCall of a batch; see batch.cpp).
//
// What an INSERT ... SELECT unnest(...) did through SPI, the planner and the executor, done
// directly the way COPY FROM does it (src/backend/commands/copyfrom.c): one tuple slot per change
// from the batch's values (no arrays), the executor's partition tuple routing (partitions made by
// retention, the default partition), table_multi_insert per partition, index entries with
// ExecInsertIndexTuples, NOT NULL and CHECK constraints with ExecConstraints, and the columns the
// worker does not supply (id, created_at) from their defaults, per row and in order, as the
// INSERT drew them. Plain C-style code: no destructors, PostgreSQL's errors leave through PgCall.
//
// The contexts of the rows go to bemi.contexts (ext/core.sql) in the same transaction, one row
// per run of changes with the same transaction and context: what bemi's trigger on bemi.changes
// does for an INSERT statement, which this path does not fire.
//
// Only bemi.changes as bemi makes it is written this way. Triggers (row or statement, on the
// table or a partition; bemi's own changes_contexts aside), a partition that is a foreign table
// or not a plain table, generated columns, a partition key on a column the worker does not
// supply, or columns of another type: the batch goes through the SPI INSERT instead, which fires
// and checks all of that (COPY's own multi-insert steps aside for triggers too). That is decided before any id is drawn or row written.
// Defaults are evaluated per row before the rows of a group are written: a default that read
// bemi.changes would not see the rows of its own group (ours are nextval and clock_timestamp).
#include "multi_insert.hpp"

#include "writers.hpp"

#include <cstring>

extern "C" {
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/execPartition.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "rewrite/rewriteHandler.h"
#include "storage/lmgr.h"
#include "utils/lsyscache.h"
#include "utils/acl.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#if PG_VERSION_NUM >= 160000
#include "parser/parse_relation.h"
#endif
}

namespace bemi {

namespace {

// A group is written once it holds this many rows or bytes of tuples, whichever comes first: small
// enough that its tuples are still in the CPU's cache when their index entries are made (COPY
// bounds its buffers by 64 kB too). Measured on ingest: 1000 rows 111k changes/s, 128 rows 132k,
// 48 rows the same.
constexpr int kGroupSize = 128;
constexpr size_t kGroupBytes = 65536;

// The columns a writer may supply, and their types. The worker supplies the first twelve, and
// created_at, hash and previous_id with the chain (created_at is drawn in the ids turn then, as the
// links cover it); a destination's rows (MultiInsertSent) come with every column but table_oid and
// the chain's. A column not supplied takes its default.
constexpr int kSupplied = 17;
constexpr int kPrimaryKey = 0, kBefore = 1, kAfter = 2, kContext = 3, kDatabase = 4, kSchema = 5, kTable = 6,
              kOperation = 7, kCommitted = 8, kXid = 9, kPosition = 10, kTableOid = 11, kCreatedAt = 12,
              kHash = 13, kPreviousId = 14, kSourceSystemId = 15, kId = 16;
struct SuppliedColumn {
	const char *name;
	Oid type;
};
const SuppliedColumn kColumns[kSupplied] = {
    {"primary_key", TEXTOID},    {"before", JSONBOID},    {"after", JSONBOID},
    {"context", JSONBOID},       {"database", TEXTOID},   {"schema", TEXTOID},
    {"table", TEXTOID},          {"operation", TEXTOID},  {"committed_at", TIMESTAMPTZOID},
    {"transaction_id", INT8OID}, {"position", PG_LSNOID}, {"table_oid", OIDOID},
    {"created_at", TIMESTAMPTZOID}, {"hash", BYTEAOID},   {"previous_id", INT8OID},
    {"source_system_id", TEXTOID},  {"id", INT8OID}};

// MultiInsertSent's column order (a destination's batch, src/fn/ingest_shim.c).
const int kSentOrder[kSentColumns] = {kId,        kPrimaryKey, kBefore,    kAfter,    kContext,
                                      kDatabase,  kSchema,     kTable,     kOperation, kCommitted,
                                      kXid,       kPosition,   kSourceSystemId, kCreatedAt};

// The rows bound for one partition, written together.
struct Group {
	ResultRelInfo *partition;
	TupleDesc desc; // the partition's row type, unpinned: slots made on it need no resource owner entry
	const TupleTableSlotOps *ops;
	TupleTableSlot **slots; // kGroupSize, made on first use, reused after each write
	int used;
	size_t bytes; // of the tuples in the used slots
};

// bemi.changes opened for inserting, for one batch.
struct Target {
	MemoryContext caller;
	EState *estate;
	ModifyTableState *mtstate;
	ResultRelInfo *root;
	PartitionTupleRouting *proute; // NULL if bemi.changes is not partitioned
	TupleTableSlot *root_slot;     // a row in bemi.changes' own form, for routing
	AttrNumber attnum[kSupplied];  // InvalidAttrNumber: not supplied, or no such column (table_oid on an old schema)
	const Datum *values[kSupplied]; // row i's value at [i * stride]; NULL: not supplied (but see database)
	const bool *nulls[kSupplied];   // the same, true for SQL NULL; NULL: never null
	int stride;
	Datum database; // every row's database when values[kDatabase] is NULL
	int ndefaults;
	AttrNumber *default_attnum;
	ExprState **default_expr;
	int id_default; // the default of column id among them, -1 if none
	Datum *ids;     // ids drawn ahead, one per row, when writing in the writers' order or chained
	bool chained;   // the worker's rows, linked: hash and previous_id are supplied
	Group *groups;
	int ngroups;
	int groups_capacity;
	CommandId cid;
};

bool Supplied(const Target *t, int k) {
	return t->values[k] != nullptr || k == kDatabase;
}

// Finds the columns supplied; false if one is missing (table_oid may be) or has another type, or
// a column is generated. C-style, inside PgCall only.
bool MapColumns(Target *t, TupleDesc desc) {
	for (int k = 0; k < kSupplied; k++)
		t->attnum[k] = InvalidAttrNumber;
	for (int i = 0; i < desc->natts; i++) {
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		if (att->attgenerated != '\0')
			return false;
		for (int k = 0; k < kSupplied; k++) {
			if (!Supplied(t, k) || strcmp(NameStr(att->attname), kColumns[k].name) != 0)
				continue;
			if (att->atttypid != kColumns[k].type)
				return false;
			t->attnum[k] = att->attnum;
		}
	}
	for (int k = 0; k < kSupplied; k++)
		if (t->attnum[k] == InvalidAttrNumber && Supplied(t, k) && k != kTableOid)
			return false;
	return true;
}

// The default expressions of the columns the worker does not supply (id: nextval of its identity
// sequence; created_at: clock_timestamp()), ready to evaluate. C-style, inside PgCall only.
void PrepareDefaults(Target *t, Relation rel) {
	TupleDesc desc = RelationGetDescr(rel);

	t->ndefaults = 0;
	t->id_default = -1;
	t->default_attnum = static_cast<AttrNumber *>(palloc(sizeof(AttrNumber) * desc->natts));
	t->default_expr = static_cast<ExprState **>(palloc(sizeof(ExprState *) * desc->natts));
	for (int i = 0; i < desc->natts; i++) {
		Form_pg_attribute att = TupleDescAttr(desc, i);
		bool supplied = false;

		if (att->attisdropped)
			continue;
		for (int k = 0; k < kSupplied; k++)
			supplied = supplied || t->attnum[k] == att->attnum;
		if (supplied)
			continue;
		Node *expr = build_column_default(rel, att->attnum);
		if (expr == nullptr)
			continue; // NULL, as an INSERT leaves it
		if (strcmp(NameStr(att->attname), "id") == 0 && att->attbyval)
			t->id_default = t->ndefaults;
		t->default_attnum[t->ndefaults] = att->attnum;
		t->default_expr[t->ndefaults] = ExecPrepareExpr(reinterpret_cast<Expr *>(expr), t->estate);
		t->ndefaults++;
	}
}

// Is the partition key made of columns the worker supplies? Routing happens before defaults are
// drawn. C-style, inside PgCall only.
bool KeyIsSupplied(const Target *t, Relation rel) {
	PartitionKey key = RelationGetPartitionKey(rel);

	for (int i = 0; i < key->partnatts; i++) {
		bool supplied = false;

		for (int k = 0; k < kSupplied; k++)
			supplied = supplied || (key->partattrs[i] != 0 && t->attnum[k] == key->partattrs[i]);
		if (!supplied)
			return false;
	}
	return true;
}

// bemi's own trigger on bemi.changes (ext/core.sql): it notes the contexts of an INSERT
// statement's rows, which this path notes itself. Any other trigger, or this one changed, sends
// the batch through the INSERT statement.
bool OnlyContextsTrigger(const TriggerDesc *triggers) {
	if (triggers == nullptr)
		return true;
	if (triggers->numtriggers != 1)
		return false;
	const Trigger &t = triggers->triggers[0];
	return strcmp(t.tgname, "changes_contexts") == 0 && !TRIGGER_FOR_ROW(t.tgtype) &&
	       TRIGGER_FOR_AFTER(t.tgtype) && TRIGGER_FOR_INSERT(t.tgtype) && !TRIGGER_FOR_UPDATE(t.tgtype) &&
	       !TRIGGER_FOR_DELETE(t.tgtype) && !TRIGGER_FOR_TRUNCATE(t.tgtype);
}

// Can rows go into this partition (or the unpartitioned table) by table_multi_insert?
// C-style, inside PgCall only.
bool Writable(ResultRelInfo *partition) {
	Relation rel = partition->ri_RelationDesc;

	return partition->ri_TrigDesc == nullptr && partition->ri_FdwRoutine == nullptr &&
	       rel->rd_rel->relkind == RELKIND_RELATION && rel->rd_tableam != nullptr;
}

// Opens bemi.changes (relid) as the executor does for an INSERT into it (CopyFrom's setup).
// Returns false if its rows cannot be written here; Close() follows either way.
// C-style, inside PgCall only.
bool Open(Target *t, Oid relid) {
	LockRelationOid(relid, RowExclusiveLock); // as the INSERT did; the range table expects it held
	t->estate = CreateExecutorState();
	t->caller = MemoryContextSwitchTo(t->estate->es_query_cxt);

	RangeTblEntry *rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = get_rel_relkind(relid);
	rte->rellockmode = RowExclusiveLock;
	rte->inh = true;
#if PG_VERSION_NUM >= 160000
	List *perminfos = NIL;
	RTEPermissionInfo *perminfo = addRTEPermissionInfo(&perminfos, rte);
	perminfo->requiredPerms = ACL_INSERT;
#endif
#if PG_VERSION_NUM >= 180000
	ExecInitRangeTable(t->estate, list_make1(rte), perminfos, bms_make_singleton(1));
#elif PG_VERSION_NUM >= 160000
	ExecInitRangeTable(t->estate, list_make1(rte), perminfos);
#else
	ExecInitRangeTable(t->estate, list_make1(rte));
#endif
	t->root = makeNode(ResultRelInfo);
	ExecInitResultRelation(t->estate, t->root, 1);
	Relation rel = t->root->ri_RelationDesc;

	// Partition routing wants a ModifyTableState; as in CopyFrom, one without a plan.
	t->mtstate = makeNode(ModifyTableState);
	t->mtstate->ps.plan = nullptr;
	t->mtstate->ps.state = t->estate;
	t->mtstate->operation = CMD_INSERT;
	t->mtstate->mt_nrels = 1;
	t->mtstate->resultRelInfo = t->root;
	t->mtstate->rootResultRelInfo = t->root;

	if (!OnlyContextsTrigger(t->root->ri_TrigDesc) || !MapColumns(t, RelationGetDescr(rel)))
		return false;
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE) {
		if (!KeyIsSupplied(t, rel))
			return false;
		t->proute = ExecSetupPartitionTupleRouting(t->estate, rel);
	} else if (Writable(t->root)) {
		ExecOpenIndices(t->root, false);
	} else {
		return false;
	}
	t->root_slot = table_slot_create(rel, &t->estate->es_tupleTable);
	PrepareDefaults(t, rel);
	t->groups_capacity = 4;
	t->groups = static_cast<Group *>(palloc(sizeof(Group) * t->groups_capacity));
	t->cid = GetCurrentCommandId(true);
	return true;
}

// Releases what Open() set up (tuple slots, partitions and their indexes, the executor state).
// C-style, inside PgCall only.
void Close(Target *t) {
	ExecResetTupleTable(t->estate->es_tupleTable, false);
	for (int g = 0; g < t->ngroups; g++)
		table_finish_bulk_insert(t->groups[g].partition->ri_RelationDesc, 0);
	if (t->proute != nullptr)
		ExecCleanupTupleRouting(t->mtstate, t->proute);
	ExecCloseResultRelations(t->estate);
	ExecCloseRangeTableRelations(t->estate);
	MemoryContextSwitchTo(t->caller);
	FreeExecutorState(t->estate);
}

// Puts row i in the root slot: the supplied values, and the defaults if `defaults` (else NULL
// there, for routing only). C-style, inside PgCall only.
void FillRow(Target *t, int i, bool defaults) {
	TupleTableSlot *slot = t->root_slot;
	Datum *values = slot->tts_values;
	bool *nulls = slot->tts_isnull;
	int natts = slot->tts_tupleDescriptor->natts;

	ExecClearTuple(slot);
	for (int a = 0; a < natts; a++) {
		values[a] = Datum(0);
		nulls[a] = true;
	}
	for (int k = 0; k < kSupplied; k++) {
		AttrNumber attnum = t->attnum[k];
		if (attnum == InvalidAttrNumber)
			continue;
		size_t at = static_cast<size_t>(i) * t->stride;
		values[attnum - 1] = t->values[k] == nullptr ? t->database : t->values[k][at];
		nulls[attnum - 1] = t->nulls[k] != nullptr && t->nulls[k][at];
	}
	if (defaults) {
		ExprContext *econtext = GetPerTupleExprContext(t->estate);
		for (int d = 0; d < t->ndefaults; d++) {
			AttrNumber attnum = t->default_attnum[d];
			if (d == t->id_default && t->ids != nullptr) {
				values[attnum - 1] = t->ids[i];
				nulls[attnum - 1] = false;
				continue;
			}
			values[attnum - 1] = ExecEvalExpr(t->default_expr[d], econtext, &nulls[attnum - 1]);
		}
	}
	ExecStoreVirtualTuple(slot);
	slot->tts_tableOid = RelationGetRelid(t->root->ri_RelationDesc);
}

// The group of a partition, made on first use. C-style, inside PgCall only.
Group *GroupOf(Target *t, ResultRelInfo *partition) {
	for (int g = t->ngroups - 1; g >= 0; g--)
		if (t->groups[g].partition == partition)
			return &t->groups[g];
	if (t->ngroups == t->groups_capacity) {
		t->groups_capacity *= 2;
		t->groups = static_cast<Group *>(repalloc(t->groups, sizeof(Group) * t->groups_capacity));
	}
	Group *group = &t->groups[t->ngroups++];
	group->partition = partition;
	group->desc = CreateTupleDescCopy(RelationGetDescr(partition->ri_RelationDesc));
	group->ops = table_slot_callbacks(partition->ri_RelationDesc);
	group->slots = static_cast<TupleTableSlot **>(palloc0(sizeof(TupleTableSlot *) * kGroupSize));
	group->used = 0;
	group->bytes = 0;
	return group;
}

// The conversion from bemi.changes' row form to the partition's (NULL: the same form).
TupleConversionMap *RootToPartition(ResultRelInfo *partition, EState *estate) {
#if PG_VERSION_NUM >= 160000
	return ExecGetRootToChildMap(partition, estate);
#else
	(void)estate;
	return partition->ri_RootToPartitionMap;
#endif
}

// Writes a group's rows with one table_multi_insert, then their index entries.
// C-style, inside PgCall only.
void Flush(Target *t, Group *group) {
	ResultRelInfo *partition = group->partition;

	if (group->used == 0)
		return;
	MemoryContext query = MemoryContextSwitchTo(GetPerTupleMemoryContext(t->estate));
	// No BulkInsertState: its ring of buffers suits a one-off load, not a worker that writes
	// the same table all day (each evicted ring buffer is written out by the worker itself).
	table_multi_insert(partition->ri_RelationDesc, group->slots, group->used, t->cid, 0, nullptr);
	for (int j = 0; j < group->used; j++) {
		if (partition->ri_NumIndices > 0) {
#if PG_VERSION_NUM >= 160000
			List *recheck = ExecInsertIndexTuples(partition, group->slots[j], t->estate, false, false,
			                                      nullptr, NIL, false);
#else
			List *recheck =
			    ExecInsertIndexTuples(partition, group->slots[j], t->estate, false, false, nullptr, NIL);
#endif
			list_free(recheck);
		}
		ExecClearTuple(group->slots[j]);
		ResetPerTupleExprContext(t->estate);
	}
	MemoryContextSwitchTo(query);
	group->used = 0;
	group->bytes = 0;
}

// Routes every row (defaults not drawn yet) and checks each partition met; false if one cannot
// be written here. targets[i]: row i's partition. C-style, inside PgCall only.
bool Route(Target *t, int count, ResultRelInfo **targets) {
	ResultRelInfo *last = nullptr;

	for (int i = 0; i < count; i++) {
		ResetPerTupleExprContext(t->estate);
		FillRow(t, i, false);
		targets[i] = t->proute == nullptr
		                 ? t->root
		                 : ExecFindPartition(t->mtstate, t->root, t->proute, t->root_slot, t->estate);
		if (targets[i] != last && !Writable(targets[i]))
			return false;
		last = targets[i];
	}
	return true;
}

// Builds each row with its defaults (ids in the batch's order), checks its constraints, and
// queues it in its partition's group; a full group is written at once, the rest at the end.
// C-style, inside PgCall only.
void InsertRouted(Target *t, int count, ResultRelInfo *const *targets) {
	for (int i = 0; i < count; i++) {
		ResultRelInfo *partition = targets[i];
		Group *group = GroupOf(t, partition);
		TupleConversionMap *map = RootToPartition(partition, t->estate);

		CHECK_FOR_INTERRUPTS();
		if (group->slots[group->used] == nullptr) // in the query's memory, as the slot's tuples
			group->slots[group->used] =
			    ExecAllocTableSlot(&t->estate->es_tupleTable, group->desc, group->ops);
		TupleTableSlot *slot = group->slots[group->used];
		ResetPerTupleExprContext(t->estate);
		MemoryContext query = MemoryContextSwitchTo(GetPerTupleMemoryContext(t->estate));
		FillRow(t, i, true);
		if (map != nullptr) {
			execute_attr_map_slot(map->attrMap, t->root_slot, slot);
			ExecMaterializeSlot(slot); // the values point into per-row memory
		} else {
			ExecCopySlot(slot, t->root_slot); // forms the tuple once, in the slot's memory
		}
		slot->tts_tableOid = RelationGetRelid(partition->ri_RelationDesc);
		if (partition->ri_RelationDesc->rd_att->constr != nullptr)
			ExecConstraints(partition, slot, t->estate);
		group->bytes += ExecFetchSlotHeapTuple(slot, false, nullptr)->t_len; // formed already: no copy
		MemoryContextSwitchTo(query);
		if (++group->used == kGroupSize || group->bytes >= kGroupBytes)
			Flush(t, group);
	}
	for (int g = 0; g < t->ngroups; g++)
		Flush(t, &t->groups[g]);
}



// Draws the ids of every row, in order, from the id column's default (nextval), for a batch
// written in the writers' order or chained; links the rows (chained); then the next batch may
// draw. C-style, inside PgCall only.
void DrawIds(Target *t, BatchWriter &writer, const BatchWriter::Columns &c, const Turns *turns) {
	int count = c.count;
	if (t->id_default >= 0) {
		ExprContext *econtext = GetPerTupleExprContext(t->estate);
		t->ids = static_cast<Datum *>(palloc(sizeof(Datum) * Max(count, 1)));
		for (int i = 0; i < count; i++) {
			bool isnull;
			t->ids[i] = ExecEvalExpr(t->default_expr[t->id_default], econtext, &isnull);
			if (isnull)
				elog(ERROR, "bemi: the default of bemi.changes.id gave NULL");
			ResetPerTupleExprContext(t->estate);
		}
	}
	if (t->chained) {
		for (int i = 0; i < count; i++)
			c.id[i] = t->ids[i];
		writer.LinkRows(c, 0, count);
	}
	if (turns != nullptr)
		PassIdsTurn(turns);
}

// Is this jsonb value {}? Only a small value can be: others are not looked into.
bool EmptyObject(Datum value) {
	if (VARATT_IS_EXTENDED(DatumGetPointer(value)) && !VARATT_IS_SHORT(DatumGetPointer(value)))
		return false;
	if (VARSIZE_ANY_EXHDR(DatumGetPointer(value)) != sizeof(uint32))
		return false;
	uint32 header;
	memcpy(&header, VARDATA_ANY(DatumGetPointer(value)), sizeof(header));
	return (header & JB_FOBJECT) != 0 && (header & JB_CMASK) == 0;
}

// The same jsonb value, byte for byte? (A transaction's changes usually share one.)
bool SameValue(Datum a, Datum b) {
	if (a == b)
		return true;
	const void *pa = DatumGetPointer(a), *pb = DatumGetPointer(b);
	if ((VARATT_IS_EXTENDED(pa) && !VARATT_IS_SHORT(pa)) || (VARATT_IS_EXTENDED(pb) && !VARATT_IS_SHORT(pb)))
		return false;
	return VARSIZE_ANY_EXHDR(pa) == VARSIZE_ANY_EXHDR(pb) &&
	       memcmp(VARDATA_ANY(pa), VARDATA_ANY(pb), VARSIZE_ANY_EXHDR(pa)) == 0;
}

// The statement that writes a batch's contexts when they cannot be written directly (see
// WriteContexts), kept for the process's life (PostgreSQL's plan cache plans it again after DDL
// on bemi.contexts).
SPIPlanPtr contexts_plan = nullptr;

void InsertContextsBySpi(int runs, Datum *xids, Datum *times, Datum *contexts) {
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "bemi: SPI_connect failed");
	if (contexts_plan == nullptr) {
		Oid types[3] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID, JSONBARRAYOID};
		SPIPlanPtr plan = SPI_prepare("INSERT INTO bemi.contexts (transaction_id, committed_at, context)"
		                              " SELECT x, t, c FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
		                              " pg_catalog.unnest($3)) AS u(x, t, c)",
		                              3, types);
		if (plan == nullptr || SPI_keepplan(plan) != 0)
			elog(ERROR, "bemi: could not prepare the statement for bemi.contexts: %s",
			     SPI_result_code_string(SPI_result));
		contexts_plan = plan;
	}
	Datum args[3] = {MakeArray(xids, nullptr, runs, INT8OID), MakeArray(times, nullptr, runs, TIMESTAMPTZOID),
	                 MakeArray(contexts, nullptr, runs, JSONBOID)};
	int rc = SPI_execute_plan(contexts_plan, args, nullptr, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "bemi: writing the contexts of a batch failed: %s", SPI_result_code_string(rc));
	SPI_finish();
}

// bemi.contexts' three columns, as ext/core.sql makes them, in its row form: their attribute
// numbers, or false if the table is not that one (a column added, renamed or of another type).
bool ContextColumns(TupleDesc desc, AttrNumber attnum[3]) {
	static const SuppliedColumn kContextColumns[3] = {
	    {"transaction_id", INT8OID}, {"committed_at", TIMESTAMPTZOID}, {"context", JSONBOID}};
	attnum[0] = attnum[1] = attnum[2] = InvalidAttrNumber;
	for (int a = 0; a < desc->natts; a++) {
		Form_pg_attribute att = TupleDescAttr(desc, a);
		if (att->attisdropped)
			continue;
		int k = 0;
		while (k < 3 && strcmp(NameStr(att->attname), kContextColumns[k].name) != 0)
			k++;
		if (k == 3 || att->atttypid != kContextColumns[k].type || attnum[k] != InvalidAttrNumber)
			return false;
		attnum[k] = att->attnum;
	}
	return attnum[0] != InvalidAttrNumber && attnum[1] != InvalidAttrNumber && attnum[2] != InvalidAttrNumber;
}

// Writes the contexts with one table_multi_insert and their index entries (the GIN on context,
// the BRIN on committed_at), as the rows of bemi.changes: an INSERT statement through SPI, with
// its parse, plan and executor start for a few rows, cost the worker more than the rows did
// (bench/profile-write.txt). bemi.contexts as ext/core.sql makes it only, written by a role that
// may insert into it without row security; anything else (a trigger, another column, a rule, a
// foreign or partitioned table) goes through the INSERT statement, which checks it all.
// C-style, inside PgCall only.
void WriteContexts(const Target *t, Oid relid, int runs, Datum *xids, Datum *times, Datum *contexts) {
	if (pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK ||
	    check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED) {
		InsertContextsBySpi(runs, xids, times, contexts);
		return;
	}
	Relation rel = table_open(relid, RowExclusiveLock);
	AttrNumber attnum[3];
	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_tableam == nullptr || rel->trigdesc != nullptr ||
	    rel->rd_rules != nullptr || !ContextColumns(RelationGetDescr(rel), attnum)) {
		table_close(rel, NoLock);
		InsertContextsBySpi(runs, xids, times, contexts);
		return;
	}
	ResultRelInfo *info = makeNode(ResultRelInfo);
	InitResultRelInfo(info, rel, 0, nullptr, 0);
	ExecOpenIndices(info, false);
	auto **slots = static_cast<TupleTableSlot **>(palloc(sizeof(TupleTableSlot *) * runs));
	for (int r = 0; r < runs; r++) {
		TupleTableSlot *slot = slots[r] = table_slot_create(rel, nullptr);
		ExecClearTuple(slot);
		for (int a = 0; a < slot->tts_tupleDescriptor->natts; a++)
			slot->tts_isnull[a] = true;
		const Datum row[3] = {xids[r], times[r], contexts[r]};
		for (int k = 0; k < 3; k++) {
			slot->tts_values[attnum[k] - 1] = row[k];
			slot->tts_isnull[attnum[k] - 1] = false;
		}
		ExecStoreVirtualTuple(slot);
		if (rel->rd_att->constr != nullptr)
			ExecConstraints(info, slot, t->estate);
	}
	table_multi_insert(rel, slots, runs, t->cid, 0, nullptr);
	for (int r = 0; r < runs; r++) {
		if (info->ri_NumIndices > 0) {
#if PG_VERSION_NUM >= 160000
			list_free(ExecInsertIndexTuples(info, slots[r], t->estate, false, false, nullptr, NIL, false));
#else
			list_free(ExecInsertIndexTuples(info, slots[r], t->estate, false, false, nullptr, NIL));
#endif
		}
		ResetPerTupleExprContext(t->estate);
		ExecDropSingleTupleTableSlot(slots[r]);
	}
	table_finish_bulk_insert(rel, 0);
	ExecCloseIndices(info);
	table_close(rel, NoLock); // the lock is kept to the end of the transaction, as an INSERT's
}

// Writes a row to bemi.contexts for each run of rows with the same transaction, commit time and
// context, but for an empty context. Nothing if bemi.contexts does not exist (an older schema,
// whose bemi.changes indexes the context itself). C-style, inside PgCall only.
void NoteContexts(const Target *t, int count, Oid schema) {
	Oid relid = get_relname_relid("contexts", schema);
	if (!OidIsValid(relid) || t->values[kContext] == nullptr || t->values[kXid] == nullptr ||
	    t->values[kCommitted] == nullptr)
		return;
	Datum *xids = static_cast<Datum *>(palloc(sizeof(Datum) * Max(count, 1)));
	Datum *times = static_cast<Datum *>(palloc(sizeof(Datum) * Max(count, 1)));
	Datum *contexts = static_cast<Datum *>(palloc(sizeof(Datum) * Max(count, 1)));
	int runs = 0;
	bool have_last = false;
	Datum last_xid = 0, last_time = 0, last_context = 0;

	for (int i = 0; i < count; i++) {
		size_t at = static_cast<size_t>(i) * t->stride;
		auto null = [&](int k) { return t->nulls[k] != nullptr && t->nulls[k][at]; };
		if (null(kContext) || null(kXid) || null(kCommitted))
			continue;
		Datum xid = t->values[kXid][at], time = t->values[kCommitted][at], context = t->values[kContext][at];
		if (have_last && DatumGetInt64(xid) == DatumGetInt64(last_xid) &&
		    DatumGetTimestampTz(time) == DatumGetTimestampTz(last_time) && SameValue(context, last_context))
			continue;
		have_last = true;
		last_xid = xid;
		last_time = time;
		last_context = context;
		if (EmptyObject(context))
			continue;
		xids[runs] = xid;
		times[runs] = time;
		contexts[runs] = context;
		runs++;
	}
	if (runs > 0)
		WriteContexts(t, relid, runs, xids, times, contexts);
}

} // namespace

namespace {

Oid ChangesRelid() {
	Oid schema = get_namespace_oid("bemi", true);
	return OidIsValid(schema) ? get_relname_relid("changes", schema) : InvalidOid;
}

} // namespace

bool MultiInsertChanges(BatchWriter &writer, const BatchWriter::Columns &c, Datum database, const Turns *turns) {
	Oid relid = ChangesRelid();
	Target target;
	bool written = false;

	if (!OidIsValid(relid))
		return false; // the SPI INSERT reports it
	memset(&target, 0, sizeof(target));
	target.chained = writer.ChainOfBatch() != nullptr;
	const Datum *values[kSupplied] = {c.pk,       c.before,    c.after,     c.context, nullptr,
	                                  c.schema,   c.table,     c.operation, c.committed, c.xid,
	                                  c.position, c.table_oid, nullptr,     nullptr,     nullptr,
	                                  nullptr,    nullptr};
	if (target.chained) {
		values[kCreatedAt] = c.created;
		values[kHash] = c.hash;
		values[kPreviousId] = c.previous_id;
		target.nulls[kPreviousId] = c.previous_null;
	}
	memcpy(target.values, values, sizeof(values));
	target.nulls[kPrimaryKey] = c.pk_null;
	target.stride = 1;
	target.database = database;
	if (Open(&target, relid)) {
		auto **targets = static_cast<ResultRelInfo **>(palloc(sizeof(ResultRelInfo *) * c.count));
		if (Route(&target, c.count, targets) && (!target.chained || target.id_default >= 0)) {
			if (turns != nullptr || target.chained)
				DrawIds(&target, writer, c, turns);
			InsertRouted(&target, c.count, targets);
			NoteContexts(&target, c.count, get_rel_namespace(relid));
			written = true;
		}
	}
	Close(&target);
	return written;
}

bool MultiInsertSent(int count, const Datum *values, const bool *nulls) {
	Oid relid = ChangesRelid();
	Target target;
	bool written = false;

	if (!OidIsValid(relid))
		return false;
	memset(&target, 0, sizeof(target));
	for (int j = 0; j < kSentColumns; j++) {
		target.values[kSentOrder[j]] = values + j;
		target.nulls[kSentOrder[j]] = nulls + j;
	}
	target.stride = kSentColumns;
	if (Open(&target, relid)) {
		auto **targets = static_cast<ResultRelInfo **>(palloc(sizeof(ResultRelInfo *) * Max(count, 1)));
		if (Route(&target, count, targets)) {
			InsertRouted(&target, count, targets);
			NoteContexts(&target, count, get_rel_namespace(relid));
			written = true;
		}
	}
	Close(&target);
	return written;
}

} // namespace bemi
