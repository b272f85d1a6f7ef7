// comment.cpp: turning a statement's Bemi comment into its context. Runs in every backend, for
// every top-level statement (capture.cpp). The scanner that finds the comment is in
// comment_scan.cpp; here the JSON is parsed with PostgreSQL's own parser, and any problem with it
// is a WARNING: a comment never makes the user's statement fail.
#include "comment.hpp"

#include <fmt/format.h>
#include <cstring>
#include <string>
#include <string_view>

#include "bemi/guard.hpp"

extern "C" {
#include "bemi/comment_scan.h"
#include "bemi/settings.h"
#include "fmgr.h"
#include "parser/parser.h"
#include "parser/scansup.h"
#include "utils/fmgrprotos.h"
}

namespace bemi {
namespace {

void Warn(const std::string &message, const std::string &detail) {
	PgCall([&]() {
		ereport(WARNING, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s", message.c_str()),
		                  errdetail("%s", detail.c_str()),
		                  errhint("Send /*Bemi {\"key\": \"value\"} Bemi*/ with a JSON object; "
		                          "the statement ran without this context.")));
	});
}

// Where the comments right in front of a statement begin. Up to 17 a statement's location took in
// the whitespace and comments before it; from 18 it is its first token, which would leave out the
// Bemi comment that Bemi's packages put in front. Steps back over whitespace and whole block
// comments (nested ones too, as PostgreSQL's lexer reads them) only, so it stops at the previous
// statement's end as 17 did.
int LeadingCommentsStart(const char *source, int location) {
	int start = location;
	for (int comments = 0; comments < 1000; comments++) {
		int p = start;
		while (p > 0 && scanner_isspace(source[p - 1]))
			p--;
		if (p < 4 || source[p - 1] != '/' || source[p - 2] != '*')
			break;
		// Back from the closing to its own opening, counting nested comments.
		int depth = 1;
		int i;
		for (i = p - 3; i >= 1 && depth > 0; i--) {
			if (source[i - 1] == '*' && source[i] == '/')
				depth++, i--;
			else if (source[i - 1] == '/' && source[i] == '*')
				depth--, i -= depth > 0;
		}
		if (depth > 0)
			break;
		start = i; // the loop's last step left i on the opening's '/'
	}
	return start;
}

// The last comment this backend parsed, and its context. Bemi's packages put the same comment on
// every statement of a request: it is parsed once, not once per statement. Only comments that
// gave a context are kept (a bad one warns every time).
struct LastComment {
	std::string json;
	ContextPtr context;
};
LastComment last_comment;

// The context of a statement text that holds a Bemi comment somewhere; null (and a WARNING) when
// the comment is not a well-formed, small enough JSON object.
ContextPtr CommentContext(std::string_view sql) {
	BemiCommentScan scan =
	    BemiScanComment(sql.data(), static_cast<int>(sql.size()), standard_conforming_strings);
	if (scan.status == BEMI_COMMENT_NONE)
		return nullptr;
	if (scan.status == BEMI_COMMENT_MALFORMED) {
		Warn("ignoring malformed Bemi comment", "The comment must look like /*Bemi {...} Bemi*/.");
		return nullptr;
	}
	if (scan.json_len > bemi_max_context_size) {
		Warn("ignoring Bemi comment: context too large",
		     fmt::format("The context is {} bytes; bemi.max_context_size is {}.", scan.json_len,
		                 bemi_max_context_size));
		return nullptr;
	}
	std::string_view text = sql.substr(scan.json_start, scan.json_len);
	if (last_comment.context && text == last_comment.json)
		return last_comment.context;
	std::string json(text);
	Jsonb *context;
	try {
		context = PgCall(
		    [&]() { return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json.c_str()))); });
	} catch (const PgError &e) {
		// Whatever the parser refused (syntax, encoding, nesting depth) is the comment's fault.
		Warn("ignoring Bemi comment: invalid JSON", e.what());
		return nullptr;
	}
	if (!JB_ROOT_IS_OBJECT(context) || JB_ROOT_IS_SCALAR(context)) {
		Warn("ignoring Bemi comment: context is not a JSON object",
		     fmt::format("The comment holds {}.", json));
		return nullptr;
	}
	ContextPtr copy = CopyContext(context);
	last_comment.json = std::move(json);
	last_comment.context = copy;
	return copy;
}

} // namespace

ContextPtr StatementCommentContext(const char *source, int location, int length) {
	location = LeadingCommentsStart(source, location < 0 ? 0 : location);
	int len = static_cast<int>(std::strlen(source + location));
	if (length > 0 && length < len)
		len = length;
	// Cheap test first: most statements carry no Bemi comment.
	if (!memmem(source + location, len, "/*Bemi", 6))
		return nullptr;
	return CommentContext(std::string_view(source + location, len));
}

} // namespace bemi
