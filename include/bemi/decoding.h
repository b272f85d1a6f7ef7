/*
 * decoding.h: turning decoded tuples into change images (src/decoding: image.cpp, entered through
 * plugin.cpp). Callable from C; an error comes back as a PostgreSQL ERROR. Plans are cached per
 * relation for the life of the process and follow its invalidations.
 */
#ifndef BEMI_DECODING_H
#define BEMI_DECODING_H

#include "postgres.h"

#include "access/htup.h"
#include "utils/jsonb.h"
#include "utils/rel.h"

#ifdef __cplusplus
extern "C" {
#endif

/* to_jsonb() of a row; unchanged TOASTed values are taken from old_tuple when it has them. */
extern Jsonb *BemiImageFromTuple(Relation rel, HeapTuple tuple, HeapTuple old_tuple);

/* An old image reduced to the replica identity columns, when the identity is not FULL. */
extern Jsonb *BemiIdentityImage(Relation rel, Jsonb *image);

/* The empty image, '{}'. */
extern Jsonb *BemiEmptyImage(void);

/*
 * The row's primary key as text, read from its image: the value itself for a one-column key, a
 * JSON array for a composite key; NULL when the table has no primary key.
 */
extern text *BemiPrimaryKey(Relation rel, Jsonb *image);

#ifdef __cplusplus
}
#endif

#endif
