// guard.hpp: the one crossing between C++ exceptions and PostgreSQL's longjmp errors, one way
// in each direction.
//
//  - PostgreSQL -> C++: every C++ function a C shim calls runs its body through bemi::Enter. Any
//    exception is caught, the C++ frames unwind, and only then, from Enter's own frame (which
//    holds nothing with a destructor), is it raised as an ERROR with its SQLSTATE, detail and hint.
//  - C++ -> PostgreSQL: C++ code calls PostgreSQL functions that may ereport(ERROR) through
//    bemi::PgCall, which turns the ERROR into a PgError exception. The callable given to PgCall
//    must own nothing with a destructor: longjmp leaves its frames without running them. Group
//    PostgreSQL work (building a tuple, a jsonb) into one PgCall rather than one per function.
//
// Both check that PostgreSQL's error stack (PG_exception_stack) is the one they found: a C++
// frame that returned or threw while PostgreSQL still pointed at its sigjmp_buf would make the
// next ERROR jump into a dead frame. That is a bug in bemi, and it stops the process (FATAL)
// before it can corrupt memory.
#pragma once

extern "C" {
#include "postgres.h"
}

#include <exception>
#include <string>
#include <type_traits>
#include <utility>

namespace bemi {

// A PostgreSQL ERROR carried through C++ frames; re-raised unchanged by the entry guard.
class PgError : public std::exception {
public:
	explicit PgError(ErrorData *data) : data_(data) {}
	const char *what() const noexcept override;
	ErrorData *data() const { return data_; }

private:
	ErrorData *data_;
};

// An error of ours, raised by the entry guard with its SQLSTATE, detail and hint.
class Error : public std::exception {
public:
	Error(int sqlstate, std::string message, std::string detail = {}, std::string hint = {})
		: sqlstate_(sqlstate), message_(std::move(message)), detail_(std::move(detail)),
		  hint_(std::move(hint)) {}
	const char *what() const noexcept override { return message_.c_str(); }
	int sqlstate() const { return sqlstate_; }
	const std::string &detail() const { return detail_; }
	const std::string &hint() const { return hint_; }

private:
	int sqlstate_;
	std::string message_, detail_, hint_;
};

// What an entry guard caught; fixed buffers so that recording it cannot fail. Only RecordFailure
// fills the buffers (Enter runs on every hook call: nothing is zeroed when nothing fails).
struct GuardFailure {
	ErrorData *pg_error = nullptr;
	int sqlstate = 0;
	char message[1024];
	char detail[1024];
	char hint[512];
};

// Runs fn(arg) under PG_TRY; returns the copied error, or nullptr if none was raised.
// (The untemplated half of PgCall.)
ErrorData *PgTryCall(void (*fn)(void *), void *arg);

// Raises what a guard caught as a PostgreSQL ERROR. Call only from a frame with no C++ objects.
[[noreturn]] void RaiseFailure(const GuardFailure *failure);

void RecordFailure(GuardFailure *failure) noexcept;

// FATAL unless PostgreSQL's error stack is `expected` (see above). `where` names the crossing.
void CheckErrorStack(const void *expected, const char *where) noexcept;
const void *ErrorStack() noexcept;

template <typename F> auto PgCall(F &&f) -> decltype(f()) {
	using R = decltype(f());
	if constexpr (std::is_void_v<R>) {
		auto thunk = [](void *p) { (*static_cast<std::remove_reference_t<F> *>(p))(); };
		if (ErrorData *e = PgTryCall(thunk, &f))
			throw PgError(e);
	} else {
		static_assert(std::is_trivially_destructible_v<R>, "PgCall returns plain values only");
		struct Call {
			std::remove_reference_t<F> *f;
			R result;
		} call{&f, R{}};
		auto thunk = [](void *p) {
			auto *c = static_cast<Call *>(p);
			c->result = (*c->f)();
		};
		if (ErrorData *e = PgTryCall(thunk, &call))
			throw PgError(e);
		return call.result;
	}
}

// Runs f; on any exception fills *failure and returns false. Never throws.
template <typename F> bool Guard(F &&f, GuardFailure *failure) noexcept {
	try {
		f();
		return true;
	} catch (...) {
		RecordFailure(failure);
		return false;
	}
}

// The way into C++ from PostgreSQL: runs f and returns its result, or raises what it threw as a
// PostgreSQL ERROR once f's frames are gone. Call it from the extern "C" function a shim calls,
// with nothing else alive in that function's frame. R must be a plain value (a Datum, a pointer).
template <typename F> auto Enter(F &&f) -> decltype(f()) {
	using R = decltype(f());
	const void *stack = ErrorStack();
	GuardFailure failure;
	if constexpr (std::is_void_v<R>) {
		bool ok = Guard([&]() { f(); }, &failure);
		CheckErrorStack(stack, "bemi::Enter");
		if (!ok)
			RaiseFailure(&failure);
	} else {
		static_assert(std::is_trivially_destructible_v<R>, "Enter returns plain values only");
		R result{};
		bool ok = Guard([&]() { result = f(); }, &failure);
		CheckErrorStack(stack, "bemi::Enter");
		if (!ok)
			RaiseFailure(&failure);
		return result;
	}
}

} // namespace bemi
