// guard.cpp: the two directions of the C++/PostgreSQL error boundary (see guard.hpp).
#include "bemi/guard.hpp"

#include <cstring>
#include <new>

extern "C" {
#include "utils/elog.h"
#include "utils/memutils.h"
}

namespace bemi {

const char *PgError::what() const noexcept {
	return data_ && data_->message ? data_->message : "PostgreSQL error";
}

const void *ErrorStack() noexcept { return PG_exception_stack; }

void CheckErrorStack(const void *expected, const char *where) noexcept {
	if (PG_exception_stack != expected)
		ereport(FATAL, (errcode(ERRCODE_INTERNAL_ERROR),
						errmsg("bemi left PostgreSQL's error stack changed at %s", where),
						errdetail("A C++ frame returned or threw while PostgreSQL pointed at it; "
								  "the process stops rather than jump into it later.")));
}

ErrorData *PgTryCall(void (*fn)(void *), void *arg) {
	MemoryContext caller_context = CurrentMemoryContext;
	const void *stack = PG_exception_stack;
	ErrorData *volatile error = nullptr;

	PG_TRY();
	{
		fn(arg);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(caller_context);
		error = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();
	CheckErrorStack(stack, "bemi::PgCall");
	return error;
}

static void CopyText(char *to, size_t size, const char *from) {
	std::strncpy(to, from ? from : "", size - 1);
	to[size - 1] = '\0';
}

// Called inside a catch handler: classifies the in-flight exception without allocating.
void RecordFailure(GuardFailure *failure) noexcept {
	failure->message[0] = failure->detail[0] = failure->hint[0] = '\0';
	try {
		throw;
	} catch (const PgError &e) {
		failure->pg_error = e.data();
	} catch (const Error &e) {
		failure->sqlstate = e.sqlstate();
		CopyText(failure->message, sizeof failure->message, e.what());
		CopyText(failure->detail, sizeof failure->detail, e.detail().c_str());
		CopyText(failure->hint, sizeof failure->hint, e.hint().c_str());
	} catch (const std::bad_alloc &) {
		failure->sqlstate = ERRCODE_OUT_OF_MEMORY;
		CopyText(failure->message, sizeof failure->message, "out of memory in bemi");
	} catch (const std::exception &e) {
		failure->sqlstate = ERRCODE_INTERNAL_ERROR;
		CopyText(failure->message, sizeof failure->message, e.what());
	} catch (...) {
		failure->sqlstate = ERRCODE_INTERNAL_ERROR;
		CopyText(failure->message, sizeof failure->message, "unknown C++ exception in bemi");
	}
}

void RaiseFailure(const GuardFailure *failure) {
	if (failure->pg_error)
		ReThrowError(failure->pg_error);
	ereport(ERROR, (errcode(failure->sqlstate), errmsg("%s", failure->message),
					failure->detail[0] ? errdetail("%s", failure->detail) : 0,
					failure->hint[0] ? errhint("%s", failure->hint) : 0));
	pg_unreachable();
}

} // namespace bemi
