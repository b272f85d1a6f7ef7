// comment_scan.cpp: finding the statement comment that Bemi's ORM packages send,
// `/*Bemi {json} Bemi*/`. Pure C++ with no PostgreSQL calls, so it is fuzzed on its own
// (test/fuzz/comment_fuzz.cpp).
//
// The scanner follows PostgreSQL's lexer far enough that text inside a string literal, a quoted
// identifier or a dollar-quoted body is never taken for a comment: a value written by a user
// must not be able to choose the context of its own change.
#include "bemi/comment_scan.h"

#include <string_view>

namespace bemi {
namespace {

constexpr std::string_view kMarker = "Bemi";

bool IsIdentChar(unsigned char c) {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
		   c == '$' || c >= 0x80;
}
bool IsIdentStart(unsigned char c) {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}
bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Scanner {
public:
	Scanner(std::string_view sql, bool standard_strings) : s_(sql), standard_(standard_strings) {}

	BemiCommentScan Run() {
		BemiCommentScan result{BEMI_COMMENT_NONE, 0, 0};
		size_t i = 0;
		while (i < s_.size()) {
			char c = s_[i];
			if (c == '\'') {
				i = SkipQuoted(i, '\'', !standard_);
			} else if (c == '"') {
				i = SkipQuoted(i, '"');
			} else if (c == '-' && At(i + 1) == '-') {
				size_t nl = s_.find('\n', i);
				i = nl == std::string_view::npos ? s_.size() : nl + 1;
			} else if (c == '/' && At(i + 1) == '*') {
				size_t end = SkipBlockComment(i);
				ConsiderComment(i, end, &result);
				i = end;
			} else if (c == '$') {
				// Identifiers are consumed whole below, so a $ here never continues one.
				i = SkipDollar(i);
			} else if (IsIdentChar(static_cast<unsigned char>(c))) {
				size_t start = i;
				while (i < s_.size() && IsIdentChar(static_cast<unsigned char>(s_[i])))
					i++;
				// E'...' : a string with backslash escapes.
				if (i == start + 1 && (c == 'e' || c == 'E') && At(i) == '\'')
					i = SkipQuoted(i, '\'', true);
			} else {
				i++;
			}
		}
		return result;
	}

private:
	char At(size_t i) const { return i < s_.size() ? s_[i] : '\0'; }

	// 'text' or "name": a doubled quote stands for itself; with `escapes` (E'' strings, or
	// standard_conforming_strings off) a backslash escapes the next character.
	size_t SkipQuoted(size_t i, char quote, bool escapes = false) {
		size_t j = i + 1;
		while (j < s_.size()) {
			if (escapes && s_[j] == '\\') {
				j += 2;
			} else if (s_[j] == quote) {
				if (At(j + 1) == quote)
					j += 2;
				else
					return j + 1;
			} else {
				j++;
			}
		}
		return s_.size();
	}

	// Block comments nest in PostgreSQL; returns the index just past the closing */.
	size_t SkipBlockComment(size_t i) {
		int depth = 0;
		size_t j = i;
		while (j < s_.size()) {
			if (s_[j] == '/' && At(j + 1) == '*') {
				depth++;
				j += 2;
			} else if (s_[j] == '*' && At(j + 1) == '/') {
				depth--;
				j += 2;
				if (depth == 0)
					return j;
			} else {
				j++;
			}
		}
		return s_.size();
	}

	// $tag$ ... $tag$; a lone $ or a parameter $1 is not a quote.
	size_t SkipDollar(size_t i) {
		size_t j = i + 1;
		if (At(j) >= '0' && At(j) <= '9') {
			while (At(j) >= '0' && At(j) <= '9')
				j++;
			return j;
		}
		if (j < s_.size() && IsIdentStart(static_cast<unsigned char>(s_[j]))) {
			while (j < s_.size() && IsIdentChar(static_cast<unsigned char>(s_[j])) && s_[j] != '$')
				j++;
		}
		if (At(j) != '$')
			return i + 1;
		std::string_view tag = s_.substr(i, j - i + 1);
		size_t close = s_.find(tag, j + 1);
		return close == std::string_view::npos ? s_.size() : close + tag.size();
	}

	// A comment whose body starts with "Bemi" is ours: it must end with " Bemi" to be well formed.
	void ConsiderComment(size_t start, size_t end, BemiCommentScan *result) {
		if (end < start + 4 || s_.substr(end - 2, 2) != "*/")
			return CheckUnterminated(start, result);
		std::string_view body = s_.substr(start + 2, end - start - 4);
		if (body.substr(0, kMarker.size()) != kMarker)
			return;
		body.remove_prefix(kMarker.size());
		if (!body.empty() && !IsSpace(body.front()) && body.front() != '{')
			return; // "/*Bemilike" is someone else's comment
		while (!body.empty() && IsSpace(body.back()))
			body.remove_suffix(1);
		if (body.size() < kMarker.size() || body.substr(body.size() - kMarker.size()) != kMarker) {
			*result = {BEMI_COMMENT_MALFORMED, 0, 0};
			return;
		}
		body.remove_suffix(kMarker.size());
		while (!body.empty() && IsSpace(body.front()))
			body.remove_prefix(1);
		while (!body.empty() && IsSpace(body.back()))
			body.remove_suffix(1);
		*result = {BEMI_COMMENT_FOUND, static_cast<int>(body.data() - s_.data()),
				   static_cast<int>(body.size())};
	}

	void CheckUnterminated(size_t start, BemiCommentScan *result) {
		if (s_.substr(start + 2, kMarker.size()) == kMarker)
			*result = {BEMI_COMMENT_MALFORMED, 0, 0};
	}

	std::string_view s_;
	bool standard_;
};

} // namespace
} // namespace bemi

extern "C" BemiCommentScan BemiScanComment(const char *sql, int len, bool standard_strings) {
	return bemi::Scanner(std::string_view(sql, len), standard_strings).Run();
}
