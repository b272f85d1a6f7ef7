// glob.h: the one pattern match of tracking rules (issue 13), a plain C++ header. Decoding matches
// rules against the names a change is recorded under (src/decoding/rules.cpp); the DDL guard
// matches the same rules against a table's names before and after a rename, attach or detach
// (src/context/ddl_guard.cpp); both must agree, so both call this. Header-only: it owns nothing,
// calls no PostgreSQL function and cannot fail, so it is safe anywhere, inside PgCall or not.
#pragma once

#ifndef __cplusplus
#error "bemi/glob.h is C++ only"
#endif

#include <cstddef>
#include <string_view>

namespace bemi {

// '*' matches any run of characters, none included; any other character matches itself
// (bytewise, case-sensitive, as names compare in the catalogs). Iterative with one backtracking
// point (the last '*'): linear in practice, no recursion.
inline bool GlobMatch(std::string_view pattern, std::string_view name) noexcept {
	size_t p = 0, n = 0, star = std::string_view::npos, resume = 0;
	while (n < name.size()) {
		if (p < pattern.size() && pattern[p] == '*') {
			star = p++;
			resume = n;
		} else if (p < pattern.size() && pattern[p] == name[n]) {
			p++;
			n++;
		} else if (star != std::string_view::npos) {
			p = star + 1;
			n = ++resume;
		} else
			return false;
	}
	while (p < pattern.size() && pattern[p] == '*')
		p++;
	return p == pattern.size();
}

} // namespace bemi
