/*
 * comment.h: finding the `/\*Bemi {json} Bemi*\/` comment of a statement (context/comment.cpp).
 */
#ifndef BEMI_COMMENT_H
#define BEMI_COMMENT_H

#include "postgres.h"
#include "utils/jsonb.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum BemiCommentStatus
{
	BEMI_COMMENT_NONE,      /* no Bemi comment */
	BEMI_COMMENT_FOUND,     /* json_start/json_len locate the JSON text */
	BEMI_COMMENT_MALFORMED  /* a comment starts with Bemi but does not end with " Bemi" */
} BemiCommentStatus;

typedef struct BemiCommentScan
{
	BemiCommentStatus status;
	int json_start;
	int json_len;
} BemiCommentScan;

/*
 * Lexes SQL text like PostgreSQL does (string literals, quoted identifiers, dollar quotes, line
 * comments, nested block comments) and returns the last real Bemi comment. Never fails.
 */
extern BemiCommentScan BemiScanComment(const char *sql, int len, bool standard_strings);

/* The context a statement's comment gives, or NULL. A bad comment is a WARNING, never an ERROR. */
extern Jsonb *BemiCommentContext(const char *sql, int len);

#ifdef __cplusplus
}
#endif

#endif
