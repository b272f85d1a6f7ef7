/*
 * comment.h: the context a statement's `Bemi` comment gives (context/comment.cpp).
 */
#ifndef BEMI_COMMENT_H
#define BEMI_COMMENT_H

#include "postgres.h"
#include "utils/jsonb.h"

#include "bemi/comment_scan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The context a statement's comment gives, or NULL. A bad comment is a WARNING, never an ERROR. */
extern Jsonb *BemiCommentContext(const char *sql, int len);

#ifdef __cplusplus
}
#endif

#endif
