// multi_insert.hpp: writing a batch's rows into bemi.changes with PostgreSQL's table-level batch
// insert, the way COPY FROM does (multi_insert.cpp): the worker's batches, and a destination's
// (bemi._ingest). C-style, inside PgCall only.
#pragma once

#include "sink.hpp"

namespace bemi {

// Inserts rows 0 .. c.count - 1 of c into bemi.changes: one slot per change built from the batch's
// values, routed to its partition, written with table_multi_insert per partition, with index
// entries and constraint checks as an INSERT would make them; id and created_at from their
// defaults, per row, in order. `database`: the text value of every row's database column.
// Returns false, having written nothing and drawn no id, when bemi.changes is not what this path
// handles (triggers, foreign or otherwise unusual partitions, changed columns): the caller then
// uses the SPI INSERT. C-style, inside PgCall only, in a transaction with a snapshot pushed.
// turns (writers.hpp), if given: the caller holds the ids turn; the ids are drawn for all rows
// first, in order, then the turn is passed and the rows are written.
// writer.ChainOfBatch(), if not null: the rows are chained; their ids are drawn first (turns or
// not), then linked (writer.LinkRows), then created_at, hash and previous_id are written as given.
bool MultiInsertChanges(BatchWriter &writer, const BatchWriter::Columns &c, Datum database, const Turns *turns);

// On a destination (bemi._ingest, src/fn/ingest.cpp): rows a source's worker sent, already checked,
// row-major: row i's column j at values[i * kSentColumns + j] (nulls alike), the columns in the
// order id, primary_key, before, after, context, database, schema, table, operation, committed_at,
// transaction_id, position, source_system_id, created_at (remote.cpp's batch). Written as above,
// every column as given (ids included); table_oid and the chain's columns left NULL. Returns
// false, having written nothing, where MultiInsertChanges would. The caller checks the rights.
// C-style, inside PgCall only.
constexpr int kSentColumns = 14;

// A one-dimensional array of `type` from count values (nulls: NULL for none), for a statement's
// argument (batch.cpp). C-style, inside PgCall only.
Datum MakeArray(Datum *values, bool *nulls, int count, Oid type);
bool MultiInsertSent(int count, const Datum *values, const bool *nulls);

} // namespace bemi
