// comment.cpp: turning a statement's Bemi comment into its context. The scanner that finds the
// comment is in comment_scan.cpp; here the JSON is parsed with PostgreSQL's own parser, and any
// problem is a WARNING: a comment never makes the user's statement fail.
extern "C" {
#include "bemi/comment.h"
}

#include <fmt/format.h>
#include <string>
#include <string_view>

#include "bemi/guard.hpp"

extern "C" {
#include "bemi/settings.h"
#include "fmgr.h"
#include "parser/parser.h"
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

Jsonb *CommentContext(std::string_view sql) {
	BemiCommentScan scan = BemiScanComment(sql.data(), static_cast<int>(sql.size()), standard_conforming_strings);
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
	std::string json(sql.substr(scan.json_start, scan.json_len));
	Jsonb *context = nullptr;
	try {
		context = PgCall([&]() {
			return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json.c_str())));
		});
	} catch (const PgError &e) {
		Warn("ignoring Bemi comment: invalid JSON", e.what());
		return nullptr;
	}
	if (!JB_ROOT_IS_OBJECT(context) || JB_ROOT_IS_SCALAR(context)) {
		Warn("ignoring Bemi comment: context is not a JSON object", fmt::format("The comment holds {}.", json));
		return nullptr;
	}
	return context;
}

} // namespace
} // namespace bemi

// Called from the capture hooks (C). Nothing may escape: a comment never fails a statement.
extern "C" Jsonb *BemiCommentContext(const char *sql, int len) {
	Jsonb *context = nullptr;
	try {
		context = bemi::CommentContext(std::string_view(sql, len));
	} catch (...) {
		context = nullptr;
	}
	return context;
}
