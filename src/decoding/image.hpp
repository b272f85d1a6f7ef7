// image.hpp: the raw PostgreSQL half of decoding (image.cpp): the trusted-cast rule, column plans,
// and jsonb built straight from tuples. Every function here calls PostgreSQL directly and owns
// nothing with a destructor: call them only inside bemi::PgCall.
#pragma once

#include "relations.hpp"

extern "C" {
#include "access/htup.h"
#include "utils/jsonb.h"
}

namespace bemi {

// Whether to_jsonb of a value of this type could call a function an ordinary role could have
// written (then the value is recorded as its output text). The rule bemi_json_is_text exposes.
// With `composites`, appends the relation OID of each composite type the answer depends on.
bool RunsUntrustedCode(Oid type, List **composites = nullptr, int depth = 0);

// Fills plan for a column of rel's descriptor (attname, type, kind, functions in `context`);
// appends to *composites the composite types' relations its plan depends on.
void PlanColumn(Form_pg_attribute att, int attno, MemoryContext context, ColumnPlan *plan, List **composites);

// Whether a sorts before b in a jsonb object (by length, then bytes).
bool KeyBefore(const ColumnPlan &a, const ColumnPlan &b);

// to_jsonb() of the row; unchanged TOASTed values are taken from old_tuple when it has them.
Jsonb *ImageOf(const RecordedRelation &plan, Relation rel, HeapTuple tuple, HeapTuple old_tuple);

// Whether an UPDATE (REPLICA IDENTITY FULL: old_tuple holds every column) changed no column but
// ignorable ones (rules.hpp, ignore with columns).
bool ChangesOnlyIgnorable(const RecordedRelation &plan, Relation rel, HeapTuple old_tuple,
                          HeapTuple new_tuple);

// An old image reduced to the replica identity columns.
Jsonb *IdentityImage(Relation rel, Jsonb *image);

// '{}'
Jsonb *EmptyImage();

// The primary key's text read from an image, or nullptr without a primary key (decoding.h).
text *PrimaryKeyText(const RecordedRelation &plan, Jsonb *image);

// {"<key>": "<text>"}: what stands in for a context or an image that could not be had.
Jsonb *ReservedNote(const char *key, const char *text);

} // namespace bemi
