/*
 * comment_scan.h: locating the `Bemi` comment of a statement; no PostgreSQL dependencies.
 */
#ifndef BEMI_COMMENT_SCAN_H
#define BEMI_COMMENT_SCAN_H

#include <stdbool.h>

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

#ifdef __cplusplus
}
#endif

#endif
