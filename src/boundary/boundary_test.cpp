// boundary_test.cpp: the core of bemi_boundary_test(kind) (its C entry is in src/fn/fn_shim.c),
// which exercises both directions of the C++/PostgreSQL error boundary. No install script creates
// it: sql/boundary.sql declares it for the test's own session (only a superuser can declare a C
// function).
#include "../fn/fn.h"

#include "bemi/guard.hpp"

#include <fmt/format.h>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
#include "executor/spi.h"
#include "utils/builtins.h"
}

namespace bemi {
namespace {

// An ERROR raised by PostgreSQL code running under C++ frames, with a detail and a hint.
void RaisePgError() {
	ereport(ERROR, (errcode(ERRCODE_CHECK_VIOLATION), errmsg("PostgreSQL error under C++ frames"),
	                errdetail("detail from PostgreSQL"), errhint("hint from PostgreSQL")));
}

// Runs `sql` through SPI, under C++ frames: what it raises comes back as a PgError.
std::string RunNested(const std::string &sql) {
	const char *answer = PgCall([&]() -> const char * {
		SPI_connect();
		SPI_execute(sql.c_str(), true, 1);
		char *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		char *copy = static_cast<char *>(SPI_palloc(strlen(value) + 1));
		strcpy(copy, value);
		SPI_finish();
		return copy;
	});
	return answer;
}

std::string BoundaryTest(const std::string &kind, const std::string &function) {
	std::vector<std::string> owned{"C++ objects with destructors are alive here"};
	if (kind == "cxx")
		throw std::runtime_error(fmt::format("C++ exception from bemi ({} objects unwound)", owned.size()));
	if (kind == "bemi")
		throw Error(ERRCODE_INVALID_PARAMETER_VALUE, "bemi error with an SQLSTATE", "detail survives",
		            "hint survives");
	if (kind == "pg") {
		// A PostgreSQL ERROR raised inside C++: becomes PgError, unwinds `owned`, is re-raised.
		PgCall(
		    []() { return DatumGetInt32(DirectFunctionCall2(int4div, Int32GetDatum(1), Int32GetDatum(0))); });
		return "unreachable";
	}
	if (kind == "pg_detail") {
		PgCall([]() { RaisePgError(); });
		return "unreachable";
	}
	// C++ -> PostgreSQL -> C++: the inner call throws under PostgreSQL's frames (SPI, the
	// executor), its Enter raises an ERROR, the outer PgCall turns it back into an exception,
	// and the outer Enter raises it again: SQLSTATE, detail and hint unchanged.
	if (kind == "nested_bemi" || kind == "nested_pg" || kind == "nested_ok")
		return "nested: " + RunNested(fmt::format("SELECT {}('{}')", function,
		                                          kind.substr(7) == "pg" ? "pg_detail" : kind.substr(7)));
	if (kind == "ok")
		return "ok";
	throw Error(ERRCODE_INVALID_PARAMETER_VALUE, fmt::format("unknown kind \"{}\"", kind), {},
	            "Use cxx, bemi, pg, pg_detail, nested_bemi, nested_pg, nested_ok or ok.");
}

} // namespace
} // namespace bemi

extern "C" text *BemiBoundaryTest(const char *kind, const char *function) {
	return bemi::Enter([&]() {
		std::string answer = bemi::BoundaryTest(kind, function);
		return bemi::PgCall(
		    [&]() { return cstring_to_text_with_len(answer.data(), static_cast<int>(answer.size())); });
	});
}
