// boundary.cpp: bemi._boundary_test(kind), which exercises both directions of the C++/PostgreSQL
// error boundary so that a regression test can prove each surfaces as a clean SQL error.
#include "../pg/guard.hpp"

#include <fmt/format.h>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
#include "fmgr.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(bemi_boundary_test);
}

namespace bemi {
namespace {

std::string BoundaryTest(const std::string &kind) {
	std::vector<std::string> owned{"C++ objects with destructors are alive here"};
	if (kind == "cxx")
		throw std::runtime_error(fmt::format("C++ exception from bemi ({} objects unwound)", owned.size()));
	if (kind == "bemi")
		throw Error(ERRCODE_INVALID_PARAMETER_VALUE, "bemi error with an SQLSTATE", "detail survives",
					"hint survives");
	if (kind == "pg") {
		// A PostgreSQL ERROR raised inside C++: becomes PgError, unwinds `owned`, is re-raised.
		PgCall([]() { return DatumGetInt32(DirectFunctionCall2(int4div, Int32GetDatum(1), Int32GetDatum(0))); });
		return "unreachable";
	}
	if (kind == "ok")
		return "ok";
	throw Error(ERRCODE_INVALID_PARAMETER_VALUE, fmt::format("unknown kind \"{}\"", kind), {},
				"Use cxx, bemi, pg or ok.");
}

} // namespace
} // namespace bemi

extern "C" Datum bemi_boundary_test(PG_FUNCTION_ARGS) {
	const char *kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	text *result = nullptr;
	BEMI_GUARDED({
		std::string answer = bemi::BoundaryTest(kind);
		result = bemi::PgCall([&]() { return cstring_to_text_with_len(answer.data(), static_cast<int>(answer.size())); });
	});
	PG_RETURN_TEXT_P(result);
}
